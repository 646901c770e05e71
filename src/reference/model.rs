//! Reference forward of a whole [`Model`], composed from the reference ops: the oracle for the GPU
//! forward, and what the golden data from transformers checks first.

use super::{attention, cross_entropy, embedding, gelu, layernorm, matmul, rmsnorm, rope, silu_mul};
use crate::model::{Arch, Linear, Mlp, Model, Norm, WeightLayout};
use crate::ops::{Layout, Matmul};

/// y [rows, out] = x [rows, in] · W (+ bias), in either weight layout.
pub fn linear(x: &[f32], rows: usize, l: &Linear) -> Vec<f32> {
    let layout = match l.layout {
        WeightLayout::OutIn => Layout::XWt,
        WeightLayout::InOut => Layout::XW,
    };
    let spec = Matmul::new(rows, l.out_dim, l.in_dim, layout);
    let mut y = vec![0.0; rows * l.out_dim];
    matmul::matmul(&spec, x, &l.weight.to_f32().data, l.bias.as_ref().map(|b| b.data.as_slice()), &mut y);
    y
}

fn norm(model: &Model, x: &[f32], n: &Norm) -> Vec<f32> {
    let c = &model.config;
    match &n.bias {
        Some(b) => layernorm::layernorm(x, &n.weight.data, &b.data, c.hidden_size, c.norm_eps),
        None => rmsnorm::rmsnorm(x, &n.weight.data, c.hidden_size, c.norm_eps),
    }
}

/// Logits [T, vocab] for `tokens` at positions 0..T.
pub fn forward(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let c = &model.config;
    let (t, d) = (tokens.len(), c.hidden_size);
    let mut x = vec![0.0; t * d];
    embedding::embedding(&model.token_embedding.to_f32().data, d, tokens, &mut x, false);
    if let Some(pos) = &model.position_embedding {
        let positions: Vec<u32> = (0..t as u32).collect();
        embedding::embedding(&pos.data, d, &positions, &mut x, true);
    }
    let heads = attention::Heads { q_heads: c.num_heads, kv_heads: c.num_kv_heads, head_dim: c.head_dim };
    for block in &model.blocks {
        let h = norm(model, &x, &block.attn_norm);
        let mut q = linear(&h, t, &block.q);
        let mut k = linear(&h, t, &block.k);
        let v = linear(&h, t, &block.v);
        if c.arch == Arch::Llama {
            rope::rope(&mut q, c.num_heads, c.head_dim, 0, c.rope_theta);
            rope::rope(&mut k, c.num_kv_heads, c.head_dim, 0, c.rope_theta);
        }
        let a = attention::attention(&q, &k, &v, 0, &heads);
        let o = linear(&a, t, &block.o);
        x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);

        let h = norm(model, &x, &block.mlp_norm);
        let m = match &block.mlp {
            Mlp::Gelu { fc, proj } => linear(&gelu::gelu(&linear(&h, t, fc)), t, proj),
            Mlp::SwiGlu { gate, up, down } => {
                let act = silu_mul::silu_mul(&linear(&h, t, gate), &linear(&h, t, up));
                linear(&act, t, down)
            }
        };
        x.iter_mut().zip(&m).for_each(|(x, m)| *x += m);
    }
    let h = norm(model, &x, &model.final_norm);
    match &model.lm_head {
        Some(head) => linear(&h, t, head),
        None => {
            let mut logits = vec![0.0; t * c.vocab_size];
            let spec = Matmul::new(t, c.vocab_size, d, Layout::XWt);
            matmul::matmul(&spec, &h, &model.token_embedding.to_f32().data, None, &mut logits);
            logits
        }
    }
}

/// Mean next-token cross-entropy of `tokens` (positions 0..T−1 predict 1..T).
pub fn loss(model: &Model, tokens: &[u32]) -> f32 {
    let logits = forward(model, tokens);
    let v = model.config.vocab_size;
    let losses = cross_entropy::cross_entropy(&logits[..(tokens.len() - 1) * v], v, &tokens[1..]);
    losses.iter().map(|&l| l as f64).sum::<f64>() as f32 / losses.len() as f32
}
