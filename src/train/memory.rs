//! The GPU memory a LoRA training run needs, worked out before anything is allocated.
//!
//! Budget = frozen weights + activations of one micro-batch + adapter (values and gradients) + AdamW's
//! two moments. Frozen weights have no gradient and no optimizer state, so the trainable side
//! scales with the adapter, not the model. The estimate mirrors the buffers that `GpuModel::upload`,
//! `GpuLora::new`, `Trainer::new` and `Session::new` allocate; `GpuContext::memory()` measures them
//! (tests compare the two exactly). The CLI prints both; the web page uses the estimate to refuse a
//! run that cannot fit before it starts.
//!
//! Activations depend on the vocabulary only through one chunk of logits (see
//! `activations::LOGIT_CHUNK_BYTES`), and with gradient checkpointing
//! (`TrainSettings::grad_checkpoint`) on the number of layers only through each block's input.

use crate::gpu;
use crate::lora::{module_sites, Adapter};
use crate::model::{Arch, Config};

use super::TrainSettings;

/// Bytes, by what they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryBudget {
    /// The frozen model (f32 on the GPU whatever the file stored).
    pub weights: u64,
    /// Adapter values A, B and their gradients.
    pub adapter: u64,
    /// AdamW's first and second moments (two per adapter value).
    pub optimizer: u64,
    /// What one micro-batch keeps from the forward for the backward, plus the backward's scratch.
    pub activations: u64,
    /// Of `activations`: the logits of one chunk of rows and their gradient (the LM head and the
    /// loss run a chunk at a time, so this stops growing with the batch at a few MiB).
    pub logits: u64,
}

impl MemoryBudget {
    /// Weights, adapter, optimizer and activations (`logits` is part of `activations`).
    pub fn total(&self) -> u64 {
        self.weights + self.adapter + self.optimizer + self.activations
    }
}

/// One GPU tensor of `n` f32 (or u32) values: WebGPU buffers are at least one word.
fn tensor(n: usize) -> u64 {
    n.max(1) as u64 * 4
}

/// Bytes of the frozen model on the GPU, tensor by tensor as `GpuModel::upload` makes them.
/// Weights larger than one binding are split in row blocks; the blocks add up to the same bytes.
pub fn weights(c: &Config) -> u64 {
    let (d, f, qd, kvd, v) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim(), c.vocab_size);
    let gpt2 = c.arch == Arch::Gpt2;
    // LayerNorm has a bias, RMSNorm does not.
    let norm = tensor(d) * if gpt2 { 2 } else { 1 };
    let linear = |i: usize, o: usize, bias: bool| tensor(i * o) + if bias { tensor(o) } else { 0 };
    let mlp = if gpt2 { linear(d, f, c.mlp_bias) + linear(f, d, c.mlp_bias) } else { 2 * linear(d, f, c.mlp_bias) + linear(f, d, c.mlp_bias) };
    let block = 2 * norm + linear(d, qd, c.qkv_bias) + 2 * linear(d, kvd, c.qkv_bias) + linear(qd, d, c.o_bias) + mlp;
    let embedding = tensor(v * d) + if gpt2 { tensor(c.max_positions * d) } else { 0 };
    let head = if c.tie_word_embeddings { 0 } else { linear(d, v, false) };
    c.num_layers as u64 * block + embedding + norm + head
}

/// The whole budget of training `adapter` on `model` with `settings`.
pub fn estimate(c: &Config, adapter: &Adapter, settings: &TrainSettings) -> MemoryBudget {
    // The GPU keeps A whole and B in one row block per layer it feeds (GPT-2's c_attn: q, k, v).
    let mut values = Vec::new();
    for (name, m) in &adapter.modules {
        let r = m.a.shape[0];
        values.push(m.a.data.len());
        match module_sites(c.arch, name) {
            Some((_, sites)) => values.extend(sites.iter().map(|s| s.out_dim(c) * r)),
            None => values.push(m.b.data.len()),
        }
    }
    let adapter_values: u64 = values.iter().map(|&n| tensor(n)).sum();
    let ranks: Vec<usize> = adapter.modules.values().map(|m| m.a.shape[0]).collect();
    // Dropout keeps the dropped input of one module at a time.
    let max_in = adapter.modules.values().map(|m| m.a.shape[1]).max().unwrap_or(0);
    let dropout = if adapter.config.lora_dropout > 0.0 { max_in } else { 0 };
    // The trainer's chunk rule with WebGPU's smallest binding limit, which every device meets: the
    // chunk is then `LOGIT_CHUNK_BYTES` at most whatever the device.
    let (batch, seq) = (settings.batch, settings.seq_len);
    let logit_rows = super::activations::logit_rows(c.vocab_size, batch * seq, WEBGPU_MIN_BINDING);
    let keep = super::activations::Keep { logit_rows, checkpoint: settings.grad_checkpoint };
    let table = super::activations::plan(c, batch, seq, &ranks, dropout, keep);
    let bytes = |shape: &Vec<usize>| tensor(shape.iter().product());
    let kept: u64 = table.each().into_iter().map(|(_, shape)| bytes(shape)).sum();
    // `Session::new`'s clipping scratch.
    let clip_work = values.iter().map(|&n| gpu::sum_squares::workspace_len(n)).max().unwrap_or(1);
    let clip = tensor(clip_work) + tensor(1) + tensor(values.len());
    MemoryBudget {
        weights: weights(c),
        adapter: 2 * adapter_values,
        optimizer: 2 * adapter_values,
        activations: kept + clip,
        logits: bytes(&table.rows.logits) + bytes(&table.rows.dlogits),
    }
}

/// WebGPU's guaranteed `maxStorageBufferBindingSize`.
const WEBGPU_MIN_BINDING: u64 = 128 << 20;

/// "12.3 MB"-style size for reports.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.1} kB", b / 1e3)
    }
}
