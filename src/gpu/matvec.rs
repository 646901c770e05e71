//! Launcher for `shaders/matvec.wgsl`: the matmul of a few rows (M ≤ [`MAX_ROWS`], a decode step)
//! by a frozen weight, X·W or X·Wᵀ, with the full [`Matmul`] semantics (alpha, beta, bias, batches,
//! A and C column blocks). `gpu::matmul::encode` sends such products here by itself; [`encode`]
//! forces this kernel (tests). Like matmul, one pipeline per weight format (B read only through
//! `weight_at`), and one per row count (the `ROWS` override). CPU reference: `reference::matmul`.

use super::{for_format, grid_rows, matmul, weight_kernels, GpuContext, GpuError, GpuTensor, Kernel1d, Recorder};
use crate::ops::Matmul;

/// matvec.wgsl composed with each weight format, `matvec_<format>`: picked by B's format.
const KERNELS: [Kernel1d; 6] = weight_kernels!("matvec", include_str!("../../shaders/matvec.wgsl"), include_str!("../../shaders/matmul_params.wgsl"));
/// Rows of A the kernel takes (its accumulators per thread); more go to the tiled kernel.
pub const MAX_ROWS: usize = 8;
const THREADS: usize = 256;

/// Whether `spec` is one this kernel runs: 1..=MAX_ROWS rows of a row-major A.
pub fn fits(spec: &Matmul) -> bool {
    (1..=MAX_ROWS).contains(&spec.m) && !spec.layout.trans_a()
}

/// Record `c = alpha · a·op(b) + beta · c (+ bias)` with this kernel (an error if it does not fit;
/// `gpu::matmul::encode` calls it for the specs that do), split as suits this device.
pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    spec: &Matmul,
    a: &GpuTensor,
    b: &GpuTensor,
    bias: Option<&GpuTensor>,
    c: &GpuTensor,
) -> Result<(), GpuError> {
    encode_split(ctx, encoder, spec, [a, b, c], bias, lanes(ctx, spec))
}

/// Threads per column of C (see the shader): along a row of B for X·Wᵀ on a GPU, where they read
/// neighbouring words; one on a CPU, where each thread costs more than a short dot product.
pub fn lanes(ctx: &GpuContext, spec: &Matmul) -> usize {
    match (ctx.is_cpu(), spec.layout.trans_b()) {
        (true, _) => 1,
        (false, true) => 32,
        (false, false) => 4,
    }
}

/// [`encode`] with `lanes` threads per column (a power of two up to 256), whatever the device:
/// tests run every split on any GPU.
pub fn encode_split(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    spec: &Matmul,
    [a, b, c]: [&GpuTensor; 3],
    bias: Option<&GpuTensor>,
    lanes: usize,
) -> Result<(), GpuError> {
    if !fits(spec) || !lanes.is_power_of_two() || lanes > THREADS {
        return Err(GpuError::Shape {
            op: "matvec",
            detail: format!("{spec:?} with {lanes} lanes: needs 1..={MAX_ROWS} rows of a row-major A and a power of two up to {THREADS} lanes"),
        });
    }
    matmul::check(spec, a, b, bias, c)?;
    if spec.c_len() == 0 {
        return Ok(());
    }
    // A CPU's one lane per column: 4 columns a thread, 32 threads a workgroup (see the shader;
    // measured on lavapipe, 32 beat 16, 64 and 128: enough workgroups for every core).
    let (threads, width) = if lanes == 1 && ctx.is_cpu() { (32, 4) } else { (THREADS, 1) };
    let cols = if lanes == 1 { threads * width } else { THREADS / lanes };
    let max = ctx.max_workgroups_per_dim();
    let (x, y) = grid_rows(spec.n.div_ceil(cols), max);
    if y > max || spec.batch > max as usize {
        return Err(GpuError::Shape {
            op: "matvec",
            detail: format!("{spec:?} needs a workgroup grid ({x}, {y}, {}), over this GPU's {max} per dimension", spec.batch),
        });
    }
    let kernel = for_format(&KERNELS, b.format);
    matmul::record(ctx, encoder, kernel, &[("ROWS", spec.m as u64), ("LANES", lanes as u64), ("WIDTH", width as u64), ("THREADS", threads as u64)], spec, [a, b, c], bias, (x, y, spec.batch as u32));
    Ok(())
}
