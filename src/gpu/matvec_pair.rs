//! Launcher for `shaders/matvec_pair.wgsl`: x·Gᵀ and x·Uᵀ for a few rows (a decode step) and two
//! weights of one shape in one dispatch, where a dispatch costs more than the work it saves: on CPU
//! devices ([`fits`]). [`encode_glu`] finishes them as SwiGLU (silu(x·Gᵀ) · (x·Uᵀ): gate, up and
//! silu_mul in one dispatch), [`encode`] stores both (a layer's k and v). Both weights in one format,
//! read through that format's `weight_<format>.wgsl`, once as itself (G) and once renamed (U).
//! CPU reference: `reference::matvec_pair`.

use std::sync::OnceLock;

use super::{check_f32, check_len, for_format, grid_rows, multi_weight_kernels, GpuContext, GpuError, GpuTensor, Kernel1d, Recorder};

/// Rows of x the kernel takes (its accumulators per thread).
pub const MAX_ROWS: usize = 8;
/// Threads per workgroup, four columns each (matvec's CPU split).
const THREADS: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    _pad: u32,
}

/// matvec_pair.wgsl + the format's seam (G at binding 1) + the same seam renamed (U at binding 4),
/// per format.
fn kernels() -> &'static [Kernel1d; 6] {
    static KERNELS: OnceLock<[Kernel1d; 6]> = OnceLock::new();
    KERNELS.get_or_init(|| multi_weight_kernels("matvec_pair", include_str!("../../shaders/matvec_pair.wgsl"), "", &[("up", 4)]))
}

/// Whether the kernel runs `rows` rows of x [rows, k] by G and U [n, k] (Linear [out, in] layout; the
/// caller checks for biases) on this device: a CPU device (on a GPU a dispatch is cheap and the
/// separate kernels split K across lanes), at most [`MAX_ROWS`] rows, K a multiple of 4, one format.
pub fn fits(ctx: &GpuContext, rows: usize, g: &GpuTensor, u: &GpuTensor) -> bool {
    ctx.is_cpu() && (1..=MAX_ROWS).contains(&rows) && g.shape.len() == 2 && g.shape == u.shape && g.shape[1] % 4 == 0 && g.format == u.format
}

/// Record out [rows, n] = silu(x·Gᵀ) · (x·Uᵀ) for x [rows, k] and G (gate), U (up) [n, k], any
/// weight format (the same for both). `GpuError::Shape` for a shape the kernel does not take (see
/// [`fits`], less the device), so a caller checks [`fits`] first.
pub fn encode_glu(ctx: &GpuContext, encoder: &mut Recorder, x: &GpuTensor, rows: usize, gate: &GpuTensor, up: &GpuTensor, out: &GpuTensor) -> Result<(), GpuError> {
    launch(ctx, encoder, "glu", x, rows, [gate, up], &[out])
}

/// Record y_g [rows, n] = x·Gᵀ and y_u [rows, n] = x·Uᵀ (checks as [`encode_glu`]).
#[allow(clippy::too_many_arguments)]
pub fn encode(ctx: &GpuContext, encoder: &mut Recorder, x: &GpuTensor, rows: usize, g: &GpuTensor, u: &GpuTensor, y_g: &GpuTensor, y_u: &GpuTensor) -> Result<(), GpuError> {
    if y_g.buffer == y_u.buffer {
        return Err(GpuError::Shape { op: "matvec_pair", detail: "the two outputs must be different buffers".into() });
    }
    launch(ctx, encoder, "main", x, rows, [g, u], &[y_g, y_u])
}

fn launch(ctx: &GpuContext, encoder: &mut Recorder, entry: &'static str, x: &GpuTensor, rows: usize, [g, u]: [&GpuTensor; 2], outs: &[&GpuTensor]) -> Result<(), GpuError> {
    const OP: &str = "matvec_pair";
    let shape = |detail: String| GpuError::Shape { op: OP, detail };
    let [n, k] = g.shape[..] else {
        return Err(shape(format!("the first weight {:?} must be a matrix [out, in]", g.shape)));
    };
    if u.shape != g.shape || u.format != g.format {
        return Err(shape(format!("the second weight ({:?}, {}) must match the first ({:?}, {})", u.shape, u.format, g.shape, g.format)));
    }
    if !(1..=MAX_ROWS).contains(&rows) || k % 4 != 0 {
        return Err(shape(format!("{rows} rows of {k} values: takes 1..={MAX_ROWS} rows and a multiple of 4 values")));
    }
    check_f32(OP, "x", x)?;
    check_len(OP, "x", x, rows * k)?;
    for out in outs {
        check_f32(OP, "the output", out)?;
        check_len(OP, "the output", out, rows * n)?;
    }
    if n == 0 {
        return Ok(());
    }
    let max = ctx.max_workgroups_per_dim();
    let (gx, gy) = grid_rows(n.div_ceil(THREADS * 4), max);
    if gy > max {
        return Err(shape(format!("{n} columns need a workgroup grid ({gx}, {gy}), over this GPU's {max} per dimension")));
    }
    let kernel = for_format(kernels(), g.format);
    let pipeline = ctx.pipeline(kernel.name, kernel.source, entry, &[("ROWS", rows as u64), ("THREADS", THREADS as u64)]);
    let uniform = ctx.uniform(&Params { m: rows as u32, n: n as u32, k: k as u32, _pad: 0 });
    let mut buffers = vec![&x.buffer, &g.buffer, &outs[0].buffer, &uniform, &u.buffer];
    buffers.extend(outs.get(1).map(|o| &o.buffer));
    let bind = ctx.bind(&pipeline, &buffers);
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}
