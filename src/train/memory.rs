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
use crate::model::{Config, HostTensor, Linear, Mlp, Model, Norm, RowParts, Weight};

use super::{TrainError, TrainSettings};

/// Bytes, by what they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryBudget {
    /// The frozen model, each weight matrix in its storage format (f16, Q4_1, …).
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
    /// Of `activations`: what attention keeps beyond q, k, v and its output — each window's row
    /// logsumexp [Hq, T] per layer, and the backward's D [Hq, T] — linear in T (the probabilities
    /// are recomputed in the backward, never stored).
    pub attention: u64,
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

/// Bytes of the frozen model on the GPU, tensor by tensor as `GpuModel::upload` makes them under a
/// binding limit of `max_binding` bytes: each weight matrix in its own format (f16, Q4_1, …), cut
/// into the same row blocks (`RowParts::blocks`), the norms, biases and positions in f32.
pub fn weights(model: &Model, max_binding: u64) -> u64 {
    let f32s = |t: &HostTensor| tensor(t.data.len());
    let matrix = |w: &Weight| -> u64 {
        let blocks = RowParts::blocks(w, max_binding);
        // WebGPU buffers are at least one word, as for f32 tensors.
        blocks.iter().map(|&(_, n)| w.format.bytes(n * w.cols()).max(4)).sum()
    };
    let linear = |l: &Linear| matrix(&l.weight) + l.bias.as_ref().map_or(0, f32s);
    let norm = |n: &Norm| f32s(&n.weight) + n.bias.as_ref().map_or(0, f32s);
    let mut total = matrix(&model.token_embedding) + model.position_embedding.as_ref().map_or(0, f32s);
    total += norm(&model.final_norm) + model.lm_head.as_ref().map_or(0, linear);
    for b in &model.blocks {
        let mlp: u64 = match &b.mlp {
            Mlp::Gelu { fc, proj } => linear(fc) + linear(proj),
            Mlp::SwiGlu { gate, up, down } => linear(gate) + linear(up) + linear(down),
        };
        total += norm(&b.attn_norm) + norm(&b.mlp_norm) + linear(&b.q) + linear(&b.k) + linear(&b.v) + linear(&b.o) + mlp;
    }
    total
}

/// The whole budget of training `adapter` with `settings` on a model of config `c` whose frozen
/// weights take `weights` bytes on the GPU ([`weights`] before upload).
pub fn estimate(weights: u64, c: &Config, adapter: &Adapter, settings: &TrainSettings) -> MemoryBudget {
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
    // `Session::new`'s clipping scratch (its squares end with a copy of AdamW's flag) and the
    // trainer's AdamW flag.
    let clip_work = values.iter().map(|&n| gpu::sum_squares::workspace_len(n)).max().unwrap_or(1);
    let clip = tensor(clip_work) + tensor(1) + tensor(values.len() + 1) + tensor(1);
    MemoryBudget {
        weights,
        adapter: 2 * adapter_values,
        optimizer: 2 * adapter_values,
        activations: kept + clip,
        logits: bytes(&table.rows.logits) + bytes(&table.rows.dlogits),
        attention: table.layers.iter().flat_map(|l| &l.lse).chain([&table.window.delta]).map(bytes).sum(),
    }
}

/// [`estimate`], refused with [`TrainError::OverMemory`] when it is above `settings.max_memory`:
/// called before anything of the run is allocated. The error carries what gradient checkpointing
/// would need when it is off, so the sentence can offer it.
pub fn check(weights: u64, c: &Config, adapter: &Adapter, settings: &TrainSettings) -> Result<MemoryBudget, TrainError> {
    let need = estimate(weights, c, adapter, settings);
    match settings.max_memory {
        Some(limit) if need.total() > limit => {
            let checkpointed = (!settings.grad_checkpoint).then(|| {
                let s = TrainSettings { grad_checkpoint: true, ..settings.clone() };
                estimate(weights, c, adapter, &s).total()
            });
            Err(TrainError::OverMemory { need, limit, checkpointed })
        }
        _ => Ok(need),
    }
}

/// ", {what} (it would need 1.2 MB)" when checkpointing is off and would help, else "".
pub fn checkpoint_advice(checkpointed: Option<u64>, what: &str) -> String {
    checkpointed.map_or(String::new(), |b| format!(", {what} (it would need {})", human(b)))
}

/// Parse a size such as `4GiB`, `512MB`, `1.5G` or `1000000` (bytes): decimal units (kB, MB, GB)
/// are powers of 1000, binary ones (KiB, MiB, GiB) and bare K/M/G/T powers of 1024.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|ch: char| !(ch.is_ascii_digit() || ch == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let scale: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        _ => return Err(format!("`{s}` is not a size: write e.g. 4GiB, 512MB or a number of bytes")),
    };
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a size: write e.g. 4GiB, 512MB or a number of bytes"))?;
    let bytes = n * scale;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("`{s}` is not a usable memory size: give at least one byte"));
    }
    Ok(bytes as u64)
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

/// A limit as the user most likely wrote it: whole GiB or MiB in binary units ("4 GiB"), else [`human`].
pub fn human_limit(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b => human(b),
    }
}
