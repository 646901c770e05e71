//! Launcher for `shaders/rmsnorm.wgsl`: per row, y = x / sqrt(mean(x²) + eps) · weight.
//! CPU reference: `reference::rmsnorm`.

use super::{check_len, check_u32, grid_rows, GpuContext, GpuError, GpuTensor, Recorder};

const SOURCE: &str = concat!(include_str!("../../shaders/rmsnorm.wgsl"), include_str!("../../shaders/workgroup_reduce.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

/// Record `out = rmsnorm(x)` over `rows` rows of `dim` values (one workgroup per row, any dim).
#[allow(clippy::too_many_arguments)]
pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    x: &GpuTensor,
    weight: &GpuTensor,
    out: &GpuTensor,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<(), GpuError> {
    check_len("rmsnorm", "x", x, rows * dim)?;
    check_len("rmsnorm", "out", out, rows * dim)?;
    check_len("rmsnorm", "weight", weight, dim)?;
    check_u32("rmsnorm", "rows · dim", rows * dim)?;
    if rows * dim == 0 {
        return Ok(());
    }
    let params = Params { rows: rows as u32, dim: dim as u32, eps, _pad: 0 };
    let pipeline = ctx.pipeline("rmsnorm", SOURCE, "main", &[("WG", super::row_workgroup(ctx, dim) as u64)]);
    let uniform = ctx.uniform(&params);
    let bind = ctx.bind(&pipeline, &[&x.buffer, &weight.buffer, &out.buffer, &uniform]);
    let (gx, gy) = grid_rows(rows, ctx.max_workgroups_per_dim());
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}

const BACKWARD_SOURCE: &str = concat!(include_str!("../../shaders/rmsnorm_backward.wgsl"), include_str!("../../shaders/workgroup_reduce.wgsl"));

/// Record `dx = ∂/∂x` of rmsnorm given the output gradient `dy` (weight frozen; the rms recomputed
/// from `x`): `shaders/rmsnorm_backward.wgsl`, reference `reference::rmsnorm::rmsnorm_backward`.
/// x, dy, dx [rows, dim]; weight [dim].
#[allow(clippy::too_many_arguments)]
pub fn encode_backward(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    x: &GpuTensor,
    weight: &GpuTensor,
    dy: &GpuTensor,
    dx: &GpuTensor,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<(), GpuError> {
    const OP: &str = "rmsnorm_backward";
    check_len(OP, "x", x, rows * dim)?;
    check_len(OP, "dy", dy, rows * dim)?;
    check_len(OP, "dx", dx, rows * dim)?;
    check_len(OP, "weight", weight, dim)?;
    check_u32(OP, "rows · dim", rows * dim)?;
    if rows * dim == 0 {
        return Ok(());
    }
    let params = Params { rows: rows as u32, dim: dim as u32, eps, _pad: 0 };
    let pipeline = ctx.pipeline("rmsnorm_backward", BACKWARD_SOURCE, "main", &[("WG", super::row_workgroup(ctx, dim) as u64)]);
    let uniform = ctx.uniform(&params);
    let bind = ctx.bind(&pipeline, &[&x.buffer, &weight.buffer, &dy.buffer, &dx.buffer, &uniform]);
    let (gx, gy) = grid_rows(rows, ctx.max_workgroups_per_dim());
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}
