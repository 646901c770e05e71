//! Plan for `shaders/matvec.wgsl`: the matmul of a few rows (M ≤ [`MAX_ROWS`], a decode step) by a
//! frozen weight, X·W or X·Wᵀ, with the full [`Matmul`] semantics (alpha, beta, bias, batches, A and
//! C column blocks). `gpu::matmul::encode` sends such products here by itself and records them (one
//! launcher for both kernels); `matmul::encode_with` with [`matmul::Kernel::Matvec`] forces this
//! kernel (tests). Like matmul, one pipeline per weight format (B read only through `weight_at` /
//! `weight_at4`), and one per row count (the `ROWS` override). CPU reference: `reference::matmul`.

use super::{grid_rows, weight_kernels, GpuContext, GpuError, Kernel1d};
use crate::ops::Matmul;

/// matvec.wgsl composed with each weight format, `matvec_<format>`: picked by B's format.
pub(super) const KERNELS: [Kernel1d; 6] = weight_kernels!("matvec", include_str!("../../shaders/matvec.wgsl"), include_str!("../../shaders/matmul_params.wgsl"));
/// Rows of A the kernel takes (its accumulators per thread); more go to the tiled kernel.
pub const MAX_ROWS: usize = 8;
const THREADS: usize = 256;

/// Whether `spec` is one this kernel runs: 1..=MAX_ROWS rows of a row-major A.
pub fn fits(spec: &Matmul) -> bool {
    (1..=MAX_ROWS).contains(&spec.m) && !spec.layout.trans_a()
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

/// Whether B's rows can be read four values at a time (`main_vec4` here and in matmul.wgsl): four
/// consecutive values of B along K (X·Wᵀ) or along N (X·W) never straddle a row, a batch or the end of B.
pub fn aligned(spec: &Matmul) -> bool {
    if spec.layout.trans_b() { spec.k % 4 == 0 } else { spec.n % 4 == 0 }
}

/// `GpuError::Shape` unless `spec` fits this kernel and `lanes` is a split it runs.
pub(super) fn check_split(spec: &Matmul, lanes: usize) -> Result<(), GpuError> {
    if !fits(spec) || !lanes.is_power_of_two() || lanes > THREADS {
        return Err(GpuError::Shape {
            op: "matvec",
            detail: format!("{spec:?} with {lanes} lanes: needs 1..={MAX_ROWS} rows of a row-major A and a power of two up to {THREADS} lanes"),
        });
    }
    Ok(())
}

/// The entry point, override constants and workgroup grid for `spec` split `lanes` ways.
pub(super) fn plan(ctx: &GpuContext, spec: &Matmul, lanes: usize) -> Result<(&'static str, Vec<(&'static str, u64)>, (u32, u32, u32)), GpuError> {
    // One lane per column (a CPU's split): 4 columns a thread, 32 threads a workgroup (see the
    // shader; measured on lavapipe, 32 beat 16, 64 and 128: enough workgroups for every core), read
    // four values of B at a time where the shape allows.
    let (threads, width) = if lanes == 1 { (32, 4) } else { (THREADS, 1) };
    let entry = if lanes == 1 && aligned(spec) { "main_vec4" } else { "main" };
    let cols = if lanes == 1 { threads * width } else { THREADS / lanes };
    let max = ctx.max_workgroups_per_dim();
    let (x, y) = grid_rows(spec.n.div_ceil(cols), max);
    if y > max || spec.batch > max as usize {
        return Err(GpuError::Shape {
            op: "matvec",
            detail: format!("{spec:?} needs a workgroup grid ({x}, {y}, {}), over this GPU's {max} per dimension", spec.batch),
        });
    }
    let constants = vec![("ROWS", spec.m as u64), ("LANES", lanes as u64), ("WIDTH", width as u64), ("THREADS", threads as u64)];
    Ok((entry, constants, (x, y, spec.batch as u32)))
}
