//! Reference for `shaders/attention.wgsl` (with the matmuls around it): causal multi-head attention
//! with grouped-query heads.
//!   q [T, Hq·Dh] for T new tokens at positions past..past+T,
//!   k, v [S, Hkv·Dh] for all S = past + T positions (the KV cache followed by the new tokens).
//! Query head h reads key/value head h / (Hq / Hkv). Query t sees keys 0..=past+t.
//! out [T, Hq·Dh] = softmax(q·kᵀ / √Dh + causal mask) · v.

pub struct Heads {
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

pub fn attention(q: &[f32], k: &[f32], v: &[f32], past: usize, h: &Heads) -> Vec<f32> {
    let (hq, hkv, dh) = (h.q_heads, h.kv_heads, h.head_dim);
    let t_new = q.len() / (hq * dh);
    let group = hq / hkv;
    let scale = 1.0 / (dh as f32).sqrt();
    let mut out = vec![0.0; q.len()];
    for t in 0..t_new {
        let visible = past + t + 1;
        for head in 0..hq {
            let kvh = head / group;
            let qv = &q[(t * hq + head) * dh..][..dh];
            let scores: Vec<f32> = (0..visible)
                .map(|s| {
                    let kv = &k[(s * hkv + kvh) * dh..][..dh];
                    qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            let o = &mut out[(t * hq + head) * dh..][..dh];
            for (s, e) in exps.iter().enumerate() {
                let vv = &v[(s * hkv + kvh) * dh..][..dh];
                for d in 0..dh {
                    o[d] += e / sum * vv[d];
                }
            }
        }
    }
    out
}
