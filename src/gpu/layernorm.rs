//! Launcher for `shaders/layernorm.wgsl`: per row, y = (x − mean) / sqrt(var + eps) · weight + bias.
//! CPU reference: `reference::layernorm`.

use super::{check_len, check_u32, grid_rows, GpuContext, GpuError, GpuTensor, Recorder};

const SOURCE: &str = concat!(include_str!("../../shaders/layernorm.wgsl"), include_str!("../../shaders/workgroup_reduce.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

/// Record `out = layernorm(x)` over `rows` rows of `dim` values (one workgroup per row, any dim).
#[allow(clippy::too_many_arguments)]
pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    x: &GpuTensor,
    weight: &GpuTensor,
    bias: &GpuTensor,
    out: &GpuTensor,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<(), GpuError> {
    check_len("layernorm", "x", x, rows * dim)?;
    check_len("layernorm", "out", out, rows * dim)?;
    check_len("layernorm", "weight", weight, dim)?;
    check_len("layernorm", "bias", bias, dim)?;
    check_u32("layernorm", "rows · dim", rows * dim)?;
    if rows * dim == 0 {
        return Ok(());
    }
    let params = Params { rows: rows as u32, dim: dim as u32, eps, _pad: 0 };
    let pipeline = ctx.pipeline("layernorm", SOURCE, "main", &[("WG", super::row_workgroup(ctx, dim) as u64)]);
    let uniform = ctx.uniform(&params);
    let bind = ctx.bind(&pipeline, &[&x.buffer, &weight.buffer, &bias.buffer, &out.buffer, &uniform]);
    let (gx, gy) = grid_rows(rows, ctx.max_workgroups_per_dim());
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}

const BACKWARD_SOURCE: &str = concat!(include_str!("../../shaders/layernorm_backward.wgsl"), include_str!("../../shaders/workgroup_reduce.wgsl"));

/// Record `dx = ∂/∂x` of layernorm given the output gradient `dy` (weight and bias frozen; mean and
/// variance recomputed from `x`): `shaders/layernorm_backward.wgsl`, reference
/// `reference::layernorm::layernorm_backward`. x, dy, dx [rows, dim]; weight [dim].
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
    const OP: &str = "layernorm_backward";
    check_len(OP, "x", x, rows * dim)?;
    check_len(OP, "dy", dy, rows * dim)?;
    check_len(OP, "dx", dx, rows * dim)?;
    check_len(OP, "weight", weight, dim)?;
    check_u32(OP, "rows · dim", rows * dim)?;
    if rows * dim == 0 {
        return Ok(());
    }
    let params = Params { rows: rows as u32, dim: dim as u32, eps, _pad: 0 };
    let pipeline = ctx.pipeline("layernorm_backward", BACKWARD_SOURCE, "main", &[("WG", super::row_workgroup(ctx, dim) as u64)]);
    let uniform = ctx.uniform(&params);
    let bind = ctx.bind(&pipeline, &[&x.buffer, &weight.buffer, &dy.buffer, &dx.buffer, &uniform]);
    let (gx, gy) = grid_rows(rows, ctx.max_workgroups_per_dim());
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}
