//! Launcher for `shaders/cross_entropy.wgsl`: per row, loss = logsumexp(logits) − logits[target].
//! CPU reference: `reference::cross_entropy`.

use super::{check_len, check_u32, grid_rows, GpuContext, GpuError, GpuTensor, Recorder};

const SOURCE: &str = concat!(include_str!("../../shaders/cross_entropy.wgsl"), include_str!("../../shaders/workgroup_reduce.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    vocab: u32,
}

/// Record `losses[r] = logsumexp(logits[r, :]) − logits[r, targets[r]]` for `rows` rows of `vocab`
/// logits; `targets` is a u32 buffer (`upload_u32`). The caller validates the targets: one ≥ vocab
/// reads nothing out of bounds and gets a loss of 0.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    logits: &GpuTensor,
    targets: &GpuTensor,
    losses: &GpuTensor,
    rows: usize,
    vocab: usize,
) -> Result<(), GpuError> {
    if vocab == 0 {
        return Err(GpuError::Shape { op: "cross_entropy", detail: "vocab must not be 0".into() });
    }
    check_len("cross_entropy", "logits", logits, rows * vocab)?;
    check_len("cross_entropy", "targets", targets, rows)?;
    check_len("cross_entropy", "losses", losses, rows)?;
    check_u32("cross_entropy", "rows · vocab", rows * vocab)?;
    if rows == 0 {
        return Ok(());
    }
    let pipeline = ctx.pipeline("cross_entropy", SOURCE, "main", &[]);
    let uniform = ctx.uniform(&Params { rows: rows as u32, vocab: vocab as u32 });
    let bind = ctx.bind(&pipeline, &[&logits.buffer, &targets.buffer, &losses.buffer, &uniform]);
    let (gx, gy) = grid_rows(rows, ctx.max_workgroups_per_dim());
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}

const BACKWARD_SOURCE: &str = concat!(include_str!("../../shaders/cross_entropy_backward.wgsl"), include_str!("../../shaders/workgroup_reduce.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BackwardParams {
    rows: u32,
    vocab: u32,
    scale: f32,
    _pad: u32,
}

/// Record the gradient of `scale · Σ_r loss[r]` with respect to the logits:
/// `dlogits[r] = scale · (softmax(logits[r]) − onehot(targets[r]))` for `rows` rows of `vocab`
/// logits (`shaders/cross_entropy_backward.wgsl`, reference
/// `reference::cross_entropy::cross_entropy_backward`). A target of
/// `reference::cross_entropy::IGNORE` (u32::MAX), or any id ≥ vocab, gives an all-zero row.
/// `scale` is typically 1 / (number of counted targets) for a mean loss. dlogits may not alias logits.
#[allow(clippy::too_many_arguments)]
pub fn encode_backward(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    logits: &GpuTensor,
    targets: &GpuTensor,
    dlogits: &GpuTensor,
    rows: usize,
    vocab: usize,
    scale: f32,
) -> Result<(), GpuError> {
    const OP: &str = "cross_entropy_backward";
    if vocab == 0 {
        return Err(GpuError::Shape { op: OP, detail: "vocab must not be 0".into() });
    }
    check_len(OP, "logits", logits, rows * vocab)?;
    check_len(OP, "targets", targets, rows)?;
    check_len(OP, "dlogits", dlogits, rows * vocab)?;
    check_u32(OP, "rows · vocab", rows * vocab)?;
    if rows == 0 {
        return Ok(());
    }
    let pipeline = ctx.pipeline("cross_entropy_backward", BACKWARD_SOURCE, "main", &[]);
    let uniform = ctx.uniform(&BackwardParams { rows: rows as u32, vocab: vocab as u32, scale, _pad: 0 });
    let bind = ctx.bind(&pipeline, &[&logits.buffer, &targets.buffer, &dlogits.buffer, &uniform]);
    let (gx, gy) = grid_rows(rows, ctx.max_workgroups_per_dim());
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}
