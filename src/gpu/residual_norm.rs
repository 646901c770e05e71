//! Launcher for `shaders/residual_norm.wgsl`: per row, s = a + b and y = norm(s) in one pass, the
//! residual add and the norm that follows it (layernorm with a bias, rmsnorm without).
//! CPU reference: `reference::residual_norm`.

use super::{check_len, check_u32, grid_rows, GpuContext, GpuError, GpuTensor, Recorder};

const SOURCE: &str = concat!(include_str!("../../shaders/residual_norm.wgsl"), include_str!("../../shaders/workgroup_reduce.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    kind: u32,
    parts: u32,
    _pad: [u32; 3],
}

/// Record `s = a + b; y = norm(s)` over `rows` rows of `dim` values: layernorm when `bias` is
/// given, else rmsnorm. `s` and `y` must be buffers other than `a` and `b`.
#[allow(clippy::too_many_arguments)]
pub fn encode(ctx: &GpuContext, encoder: &mut Recorder, a: &GpuTensor, b: &GpuTensor, weight: &GpuTensor, bias: Option<&GpuTensor>, s: &GpuTensor, y: &GpuTensor, rows: usize, dim: usize, eps: f32) -> Result<(), GpuError> {
    encode_parts(ctx, encoder, a, b, 1, weight, bias, s, y, rows, dim, eps)
}

/// [`encode`] with b the sum of `parts` ≥ 1 partial products b [parts, rows, dim], added in order.
#[allow(clippy::too_many_arguments)]
pub fn encode_parts(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    a: &GpuTensor,
    b: &GpuTensor,
    parts: usize,
    weight: &GpuTensor,
    bias: Option<&GpuTensor>,
    s: &GpuTensor,
    y: &GpuTensor,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<(), GpuError> {
    const OP: &str = "residual_norm";
    for (name, t) in [("a", a), ("s", s), ("y", y)] {
        check_len(OP, name, t, rows * dim)?;
    }
    if parts == 0 {
        return Err(GpuError::Shape { op: OP, detail: "b must hold at least one part".into() });
    }
    check_len(OP, "b", b, parts * rows * dim)?;
    check_u32(OP, "parts · rows · dim", parts * rows * dim)?;
    check_len(OP, "weight", weight, dim)?;
    if let Some(bias) = bias {
        check_len(OP, "bias", bias, dim)?;
    }
    check_u32(OP, "rows · dim", rows * dim)?;
    if rows * dim == 0 {
        return Ok(());
    }
    let params = Params { rows: rows as u32, dim: dim as u32, eps, kind: bias.is_some() as u32, parts: parts as u32, _pad: [0; 3] };
    let pipeline = ctx.pipeline(OP, SOURCE, "main", &[("WG", super::row_workgroup(ctx, dim) as u64)]);
    let uniform = ctx.uniform(&params);
    // rmsnorm reads no bias: the weight stands in for the binding.
    let bias = bias.unwrap_or(weight);
    let bind = ctx.bind(&pipeline, &[&a.buffer, &b.buffer, &weight.buffer, &bias.buffer, &s.buffer, &y.buffer, &uniform]);
    let (gx, gy) = grid_rows(rows, ctx.max_workgroups_per_dim());
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}
