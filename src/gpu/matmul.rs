//! Launcher for `shaders/matmul.wgsl`: tiled f32 matmul in the three training layouts, batched,
//! with optional bias, scale and accumulation. CPU reference: `reference::matmul`.
//!
//! The kernel reads its B operand (the weight) only through `weight_at`, defined by a small
//! `shaders/weight_<format>.wgsl` composed after it here, one pipeline per format (f32, f16, bf16,
//! Q8_0, Q4_0, Q4_1), picked by B's [`GpuTensor::format`]: a frozen weight stays packed on the GPU
//! and is dequantized as the tile is staged. The CPU reference of each format's decoding is
//! `model::Weight::to_f32`. The tiling, layouts and accumulation do not depend on the format.
//!
//! A product with at most [`matvec::MAX_ROWS`] rows of a row-major A (a decode step) goes to
//! `shaders/matvec.wgsl` instead (see `gpu::matvec`): same spec, same semantics, no tile padding.

use super::{check_f32, matvec, tune, check_len, for_format, weight_kernels, GpuContext, GpuError, GpuTensor, Kernel1d, Recorder};
use crate::ops::Matmul;

/// matmul.wgsl composed with each weight format, `matmul_<format>`: picked by B's format.
const KERNELS: [Kernel1d; 6] = weight_kernels!("matmul", include_str!("../../shaders/matmul.wgsl"), include_str!("../../shaders/matmul_params.wgsl"));

/// The uniform of matmul.wgsl and matvec.wgsl (the same struct in both).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    has_bias: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    alpha: f32,
    beta: f32,
    ldc: u32,
    c_offset: u32,
    bias_offset: u32,
    lda: u32,
    a_offset: u32,
}

/// Record `c = alpha · op(a)·op(b) + beta · c (+ bias)` into `encoder`.
pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    spec: &Matmul,
    a: &GpuTensor,
    b: &GpuTensor,
    bias: Option<&GpuTensor>,
    c: &GpuTensor,
) -> Result<(), GpuError> {
    if ctx.matvec() && matvec::fits(spec) {
        return matvec::encode(ctx, encoder, spec, a, b, bias, c);
    }
    let variant = ctx.tuner.variant(spec, b.format);
    encode_variant(ctx, encoder, spec, a, b, bias, c, variant)
}

/// [`encode`] with the tiled kernel's variant `v` of [`tune::VARIANTS`] (never the matvec kernel).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_variant(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    spec: &Matmul,
    a: &GpuTensor,
    b: &GpuTensor,
    bias: Option<&GpuTensor>,
    c: &GpuTensor,
    v: usize,
) -> Result<(), GpuError> {
    check(spec, a, b, bias, c)?;
    if spec.c_len() == 0 {
        return Ok(());
    }
    let variant = tune::VARIANTS[v];
    let (tile_m, tile_n) = variant.tile();
    let max = ctx.max_workgroups_per_dim() as usize;
    let groups = (spec.n.div_ceil(tile_n), spec.m.div_ceil(tile_m), spec.batch);
    if groups.0 > max || groups.1 > max || groups.2 > max {
        return Err(GpuError::Shape {
            op: "matmul",
            detail: format!("{spec:?} needs a workgroup grid {groups:?}, over this GPU's {max} per dimension"),
        });
    }
    let groups = (groups.0 as u32, groups.1 as u32, groups.2 as u32);
    record(ctx, encoder, for_format(&KERNELS, b.format), &variant.constants(), spec, [a, b, c], bias, groups);
    Ok(())
}

/// The operand checks shared with matvec: only B may be packed, every buffer long enough.
pub(super) fn check(spec: &Matmul, a: &GpuTensor, b: &GpuTensor, bias: Option<&GpuTensor>, c: &GpuTensor) -> Result<(), GpuError> {
    check_f32("matmul", "A", a)?;
    check_f32("matmul", "C", c)?;
    check_len("matmul", "A", a, spec.a_len())?;
    check_len("matmul", "B", b, spec.b_len())?;
    check_len("matmul", "C", c, spec.c_len())?;
    if let Some(bias) = bias {
        check_len("matmul", "bias", bias, spec.bias_offset + spec.n)?;
    }
    Ok(())
}

/// Bind [a, b, bias, c, params] (the layout of matmul.wgsl and matvec.wgsl) and dispatch `groups`.
#[allow(clippy::too_many_arguments)]
pub(super) fn record(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    kernel: &Kernel1d,
    constants: &[(&'static str, u64)],
    spec: &Matmul,
    [a, b, c]: [&GpuTensor; 3],
    bias: Option<&GpuTensor>,
    groups: (u32, u32, u32),
) {
    let pipeline = ctx.pipeline(kernel.name, kernel.source, "main", constants);
    let uniform = ctx.uniform(&Params::of(spec, bias.is_some()));
    // Without a bias the shader never reads binding 2, but WebGPU wants something bound: reuse A.
    let bias = bias.unwrap_or(a);
    let bind = ctx.bind(&pipeline, &[&a.buffer, &b.buffer, &bias.buffer, &c.buffer, &uniform]);
    encoder.dispatch(&pipeline, &bind, groups);
}

impl Params {
    fn of(spec: &Matmul, has_bias: bool) -> Self {
        Params {
            m: spec.m as u32,
            n: spec.n as u32,
            k: spec.k as u32,
            trans_a: spec.layout.trans_a() as u32,
            trans_b: spec.layout.trans_b() as u32,
            has_bias: has_bias as u32,
            stride_a: (spec.m * spec.lda) as u32,
            stride_b: if spec.shared_b { 0 } else { (spec.k * spec.n) as u32 },
            stride_c: (spec.m * spec.ldc) as u32,
            alpha: spec.alpha,
            beta: spec.beta,
            ldc: spec.ldc as u32,
            c_offset: spec.c_offset as u32,
            bias_offset: spec.bias_offset as u32,
            lda: spec.lda as u32,
            a_offset: spec.a_offset as u32,
        }
    }
}
