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

use super::{check_f32, check_len, for_format, matvec, tune, weight_kernels, GpuContext, GpuError, GpuTensor, Kernel1d, Recorder};
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

/// The operands of one product: A, B (the weight; the only one that may be packed), C, and an
/// optional bias.
#[derive(Clone, Copy)]
pub struct Operands<'a> {
    pub a: &'a GpuTensor,
    pub b: &'a GpuTensor,
    pub bias: Option<&'a GpuTensor>,
    pub c: &'a GpuTensor,
}

/// Which kernel records a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// matvec for a few rows (unless [`GpuContext::set_matvec`] turned it off), else the tiled
    /// variant the tuner picked for the shape: what [`encode`] does.
    Auto,
    /// The tiled kernel's variant `v` of [`tune::VARIANTS`].
    Tiled(usize),
    /// shaders/matvec.wgsl with `lanes` threads per column (a power of two up to 256; see
    /// [`matvec::lanes`]), whatever the device: tests run every split on any GPU.
    Matvec { lanes: usize },
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
    encode_with(ctx, encoder, spec, Operands { a, b, bias, c }, Kernel::Auto)
}

/// [`encode`] with the kernel chosen by `kernel`: the one launcher of matmul.wgsl and matvec.wgsl.
pub fn encode_with(ctx: &GpuContext, encoder: &mut Recorder, spec: &Matmul, ops: Operands, kernel: Kernel) -> Result<(), GpuError> {
    let kernel = match kernel {
        Kernel::Auto if ctx.matvec() && matvec::fits(spec) => Kernel::Matvec { lanes: matvec::lanes(ctx, spec) },
        Kernel::Auto => Kernel::Tiled(ctx.tuner.variant(spec, ops.b.format)),
        chosen => chosen,
    };
    if let Kernel::Matvec { lanes } = kernel {
        matvec::check_split(spec, lanes)?;
    }
    check(spec, ops)?;
    if spec.c_len() == 0 {
        return Ok(());
    }
    let max = ctx.max_workgroups_per_dim();
    let (table, entry, constants, groups) = match kernel {
        Kernel::Matvec { lanes } => {
            let (entry, constants, groups) = matvec::plan(ctx, spec, lanes)?;
            (&matvec::KERNELS, entry, constants, groups)
        }
        Kernel::Tiled(v) => {
            let variant = tune::VARIANTS[v];
            let (tile_m, tile_n) = variant.tile();
            let groups = (spec.n.div_ceil(tile_n), spec.m.div_ceil(tile_m), spec.batch);
            if [groups.0, groups.1, groups.2].iter().any(|&g| g > max as usize) {
                return Err(GpuError::Shape {
                    op: "matmul",
                    detail: format!("{spec:?} needs a workgroup grid {groups:?}, over this GPU's {max} per dimension"),
                });
            }
            (&KERNELS, variant.entry(spec), variant.constants(), (groups.0 as u32, groups.1 as u32, groups.2 as u32))
        }
        Kernel::Auto => unreachable!("resolved above"),
    };
    let kernel = for_format(table, ops.b.format);
    let pipeline = ctx.pipeline(kernel.name, kernel.source, entry, &constants);
    let uniform = ctx.uniform(&Params::of(spec, ops.bias.is_some()));
    // Without a bias the shader never reads binding 2, but WebGPU wants something bound: reuse A.
    let bias = ops.bias.unwrap_or(ops.a);
    let bind = ctx.bind(&pipeline, &[&ops.a.buffer, &ops.b.buffer, &bias.buffer, &ops.c.buffer, &uniform]);
    encoder.dispatch(&pipeline, &bind, groups);
    Ok(())
}

/// The operand checks of both kernels: only B may be packed, every buffer long enough.
fn check(spec: &Matmul, Operands { a, b, bias, c }: Operands) -> Result<(), GpuError> {
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
