//! Launcher for `shaders/topk.wgsl`: the k most likely tokens of a row of logits, ranked as the CPU
//! sampler ranks them (`generate::sample`), so generation reads back ids instead of a vocabulary.

use super::{check_len, check_u32, GpuContext, GpuError, GpuTensor, Recorder};

const SOURCE: &str = include_str!("../../shaders/topk.wgsl");
/// Most candidates one call ranks (each is a pass over the logits).
pub const MAX_K: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    k: u32,
    total: u32,
    _pad: u32,
}

/// How candidates are compared (see the shader): greedy's `>` or the top-k sort's `total_cmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// IEEE `>`, lowest id among equal values: `generate::sample`'s argmax.
    Greedy,
    /// `f32::total_cmp`, lowest id among bit-equal values: its stable sort for top-k.
    Total,
}

/// Record `out[..k]` = the ids of the k first of `logits[..n]` (larger first, lower id on ties),
/// `out[k..2k]` = their values' bits. 1 ≤ k ≤ min(n, [`MAX_K`]).
pub fn encode(ctx: &GpuContext, encoder: &mut Recorder, logits: &GpuTensor, n: usize, k: usize, order: Order, out: &GpuTensor) -> Result<(), GpuError> {
    if k == 0 || k > MAX_K || k > n {
        return Err(GpuError::Shape { op: "topk", detail: format!("k = {k} is outside 1..={} for {n} values", MAX_K.min(n)) });
    }
    check_len("topk", "logits", logits, n)?;
    check_len("topk", "out", out, 2 * k)?;
    let params = Params { n: check_u32("topk", "the value count", n)?, k: k as u32, total: (order == Order::Total) as u32, _pad: 0 };
    // The row kernels' workgroup: 256, or on a CPU device (a workgroup's invocations on one core)
    // the fewest, 32, for a shorter reduction.
    let threads = super::row_workgroup(ctx, 1) as u64;
    let pipeline = ctx.pipeline("topk", SOURCE, "main", &[("THREADS", threads)]);
    let uniform = ctx.uniform(&params);
    let bind = ctx.bind(&pipeline, &[&logits.buffer, &out.buffer, &uniform]);
    encoder.dispatch(&pipeline, &bind, (1, 1, 1));
    Ok(())
}
