//! Launcher for `shaders/cross_entropy.wgsl`: per row, loss = logsumexp(logits) − logits[target].
//! CPU reference: `reference::cross_entropy`.

use super::{check_len, check_u32, grid_rows, GpuContext, GpuError, GpuTensor};

const SOURCE: &str = include_str!("../../shaders/cross_entropy.wgsl");

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
    encoder: &mut wgpu::CommandEncoder,
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
    let (gx, gy) = grid_rows(rows, ctx.limits().max_compute_workgroups_per_dimension);
    ctx.dispatch(encoder, &pipeline, &bind, (gx, gy, 1));
    Ok(())
}
