//! Launcher for `shaders/matvec_glu.wgsl`: SwiGLU's silu(x·Gᵀ) · (x·Uᵀ) for a few rows (a decode
//! step) in one dispatch instead of three (gate, up, silu_mul), where a dispatch costs more than the
//! work it saves: on CPU devices ([`fits`]). Both weights in one format, read through that format's
//! `weight_<format>.wgsl`, once as itself (G) and once renamed (U). CPU reference:
//! `reference::matvec_glu`.

use std::sync::OnceLock;

use super::{check_f32, check_len, for_format, grid_rows, GpuContext, GpuError, GpuTensor, Kernel1d, Recorder};
use crate::model::WeightFormat;

/// Rows of A the kernel takes (its accumulators per thread).
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

/// Each weight format's seam, in [`WeightFormat::ALL`]'s order.
const WEIGHTS: [&str; 6] = [
    include_str!("../../shaders/weight_f32.wgsl"),
    include_str!("../../shaders/weight_f16.wgsl"),
    include_str!("../../shaders/weight_bf16.wgsl"),
    include_str!("../../shaders/weight_q8_0.wgsl"),
    include_str!("../../shaders/weight_q4_0.wgsl"),
    include_str!("../../shaders/weight_q4_1.wgsl"),
];
const NAMES: [&str; 6] = ["matvec_glu_f32", "matvec_glu_f16", "matvec_glu_bf16", "matvec_glu_q8_0", "matvec_glu_q4_0", "matvec_glu_q4_1"];

/// matvec_glu.wgsl + the format's seam (G at binding 1) + the same seam renamed (U at binding 4),
/// per format: composed once (the renaming is text, so it cannot be a `concat!`).
fn kernels() -> &'static [Kernel1d; 6] {
    static KERNELS: OnceLock<[Kernel1d; 6]> = OnceLock::new();
    KERNELS.get_or_init(|| {
        std::array::from_fn(|i| {
            let up = WEIGHTS[i].replace("@binding(1)", "@binding(4)").replace("weight", "up");
            let source = format!("{}{}{}", include_str!("../../shaders/matvec_glu.wgsl"), WEIGHTS[i], up);
            Kernel1d { name: NAMES[i], source: Box::leak(source.into_boxed_str()) }
        })
    })
}

/// Whether the fused kernel runs SwiGLU for `rows` rows of x [rows, k] by G and U [n, k] (Linear
/// [out, in] layout, no biases) on this device: a CPU device (on a GPU a dispatch is cheap and the
/// three kernels split K across lanes), at most [`MAX_ROWS`] rows, K a multiple of 4, one format.
pub fn fits(ctx: &GpuContext, rows: usize, gate: &GpuTensor, up: &GpuTensor) -> bool {
    ctx.is_cpu() && (1..=MAX_ROWS).contains(&rows) && gate.shape.len() == 2 && gate.shape == up.shape && gate.shape[1] % 4 == 0 && gate.format == up.format
}

/// Record out [rows, n] = silu(x·Gᵀ) · (x·Uᵀ) for x [rows, k] and G, U [n, k] (any weight format,
/// the same for both). `GpuError::Shape` for a shape the kernel does not take (see [`fits`], less the
/// device), so a caller checks [`fits`] first.
pub fn encode(ctx: &GpuContext, encoder: &mut Recorder, x: &GpuTensor, rows: usize, gate: &GpuTensor, up: &GpuTensor, out: &GpuTensor) -> Result<(), GpuError> {
    const OP: &str = "matvec_glu";
    let shape = |detail: String| GpuError::Shape { op: OP, detail };
    let [n, k] = gate.shape[..] else {
        return Err(shape(format!("the gate weight {:?} must be a matrix [out, in]", gate.shape)));
    };
    if up.shape != gate.shape || up.format != gate.format {
        return Err(shape(format!("the up weight ({:?}, {}) must match the gate's ({:?}, {})", up.shape, up.format, gate.shape, gate.format)));
    }
    if !(1..=MAX_ROWS).contains(&rows) || k % 4 != 0 {
        return Err(shape(format!("{rows} rows of {k} values: takes 1..={MAX_ROWS} rows and a multiple of 4 values")));
    }
    check_f32(OP, "x", x)?;
    check_f32(OP, "out", out)?;
    check_len(OP, "x", x, rows * k)?;
    check_len(OP, "out", out, rows * n)?;
    if n == 0 {
        return Ok(());
    }
    let max = ctx.max_workgroups_per_dim();
    let (gx, gy) = grid_rows(n.div_ceil(THREADS * 4), max);
    if gy > max {
        return Err(shape(format!("{n} columns need a workgroup grid ({gx}, {gy}), over this GPU's {max} per dimension")));
    }
    let kernel = for_format(kernels(), gate.format);
    let pipeline = ctx.pipeline(kernel.name, kernel.source, "main", &[("ROWS", rows as u64), ("THREADS", THREADS as u64)]);
    let uniform = ctx.uniform(&Params { m: rows as u32, n: n as u32, k: k as u32, _pad: 0 });
    let bind = ctx.bind(&pipeline, &[&x.buffer, &gate.buffer, &out.buffer, &uniform, &up.buffer]);
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}

/// The formats' order is [`WeightFormat::ALL`]'s (what [`for_format`] indexes by).
const _: () = assert!(WeightFormat::ALL.len() == WEIGHTS.len());
