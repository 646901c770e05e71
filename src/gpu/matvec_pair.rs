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
    parts: u32,
    eps: f32,
    _pad: [u32; 3],
}

/// Values of H [rows, K] the `mlp` entry stages in workgroup memory (the shader's STAGED).
const STAGED: usize = 2944;

/// matvec_pair.wgsl + stage_norm.wgsl (the `mlp` entry's norm) + the format's seam (G at binding
/// 1) + the same seam renamed (U at binding 4, D at binding 8), per format.
fn kernels() -> &'static [Kernel1d; 6] {
    static KERNELS: OnceLock<[Kernel1d; 6]> = OnceLock::new();
    KERNELS.get_or_init(|| {
        let source = concat!(include_str!("../../shaders/matvec_pair.wgsl"), include_str!("../../shaders/stage_norm.wgsl"));
        multi_weight_kernels("matvec_pair", source, "", &[("up", 4), ("down", 8)])
    })
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
    launch(ctx, encoder, "glu", x, rows, [gate, up], &[out], None)
}

/// Record y_g [rows, n] = x·Gᵀ and y_u [rows, n] = x·Uᵀ (checks as [`encode_glu`]).
#[allow(clippy::too_many_arguments)]
pub fn encode(ctx: &GpuContext, encoder: &mut Recorder, x: &GpuTensor, rows: usize, g: &GpuTensor, u: &GpuTensor, y_g: &GpuTensor, y_u: &GpuTensor) -> Result<(), GpuError> {
    if y_g.buffer == y_u.buffer {
        return Err(GpuError::Shape { op: "matvec_pair", detail: "the two outputs must be different buffers".into() });
    }
    launch(ctx, encoder, "main", x, rows, [g, u], &[y_g, y_u], None)
}

/// A Llama MLP's three weights, Linear [out, in]: gate and up [N, K], down [K, N], one format.
pub struct Mlp<'a> {
    pub gate: &'a GpuTensor,
    pub up: &'a GpuTensor,
    pub down: &'a GpuTensor,
}

/// The residual stream into the MLP's norm: s = x + Σ_j add[j] (add [parts, rows, K]), normalized
/// by rmsnorm with `weight` and `eps`; s is stored.
pub struct Norm<'a> {
    pub x: &'a GpuTensor,
    pub add: &'a GpuTensor,
    pub parts: usize,
    pub weight: &'a GpuTensor,
    pub eps: f32,
    pub s: &'a GpuTensor,
}

impl Norm<'_> {
    /// `GpuError::Shape` for `op` unless the parts, the weight and S hold f32 values enough for
    /// `rows` rows of `k`.
    pub(crate) fn check(&self, op: &'static str, rows: usize, k: usize) -> Result<(), GpuError> {
        for (what, t, n) in [("the residual's parts", self.add, self.parts * rows * k), ("the norm's weight", self.weight, k), ("S", self.s, rows * k)] {
            check_f32(op, what, t)?;
            check_len(op, what, t, n)?;
        }
        Ok(())
    }

    /// `GpuError::Shape` for `op` unless what the call writes, `written` (named `names`) and S, are
    /// different buffers and none of them is one of the norm's inputs.
    pub(crate) fn check_outputs(&self, op: &'static str, names: &str, written: &[&wgpu::Buffer]) -> Result<(), GpuError> {
        let all: Vec<&wgpu::Buffer> = written.iter().copied().chain([&self.s.buffer]).collect();
        if !all_different(&all) {
            return Err(GpuError::Shape { op, detail: format!("{names} and S must be different buffers") });
        }
        if [&self.x.buffer, &self.add.buffer, &self.weight.buffer].iter().any(|b| all.contains(b)) {
            return Err(GpuError::Shape { op, detail: format!("the norm's inputs (x, the parts, the weight) must not be written by the same call ({names}, S)") });
        }
        Ok(())
    }
}

/// Whether no buffer appears twice in `buffers` (the outputs of one dispatch).
pub(crate) fn all_different(buffers: &[&wgpu::Buffer]) -> bool {
    buffers.iter().enumerate().all(|(i, b)| !buffers[..i].contains(b))
}

/// Partial products the `mlp` entry leaves for an MLP of `n` hidden units: one per workgroup.
pub fn mlp_parts(n: usize) -> usize {
    n.div_ceil(THREADS * 4)
}

/// Whether [`encode_mlp`] runs `rows` rows through these weights on this device: [`fits`] for gate
/// and up, down [K, N] in their format, N % 4 = 0, and rows · K within the staged memory.
pub fn fits_mlp(ctx: &GpuContext, rows: usize, w: &Mlp) -> bool {
    let [n, k] = w.gate.shape[..] else { return false };
    fits(ctx, rows, w.gate, w.up) && w.down.shape == [k, n] && w.down.format == w.gate.format && n % 4 == 0 && rows * k <= STAGED
}

/// Record a decode step's Llama MLP from its residual stream (the shader's entry `mlp`): norm.s = x +
/// Σ add, h = rmsnorm(s), f = silu(h·Gᵀ) · (h·Uᵀ), and out [G, rows, K] = the down product f·Dᵀ as
/// G = [`mlp_parts`](N) partial products (sum them, in order, for the MLP's output). Returns G.
/// `GpuError::Shape` for shapes [`fits_mlp`] refuses (less the device), and for an output that is S
/// or one of the norm's inputs.
pub fn encode_mlp(ctx: &GpuContext, encoder: &mut Recorder, rows: usize, norm: &Norm, w: &Mlp, out: &GpuTensor) -> Result<usize, GpuError> {
    let shape = |detail: String| GpuError::Shape { op: "matvec_pair", detail };
    let [n, k] = w.gate.shape[..] else {
        return Err(shape(format!("the gate {:?} must be a matrix [out, in]", w.gate.shape)));
    };
    if w.down.shape != [k, n] || w.down.format != w.gate.format || n % 4 != 0 || rows * k > STAGED {
        return Err(shape(format!(
            "down ({:?}, {}) must be [{k}, {n}] in the gate's format {}, {n} a multiple of 4, and {rows} rows of {k} values at most {STAGED} values",
            w.down.shape, w.down.format, w.gate.format
        )));
    }
    if norm.parts == 0 {
        return Err(shape("the residual needs at least one part to add".into()));
    }
    norm.check("matvec_pair", rows, k)?;
    let parts = mlp_parts(n);
    check_len("matvec_pair", "the output parts", out, parts * rows * k)?;
    norm.check_outputs("matvec_pair", "the output parts", &[&out.buffer])?;
    let extra = Extra { parts: norm.parts as u32, eps: norm.eps, buffers: [&norm.add.buffer, &norm.weight.buffer, &w.down.buffer] };
    launch(ctx, encoder, "mlp", norm.x, rows, [w.gate, w.up], &[out, norm.s], Some(extra))?;
    Ok(parts)
}

/// What the `mlp` entry takes beyond the others: the residual's parts and the norm's epsilon, and
/// bindings 6 (add), 7 (the norm's weight) and 8 (down).
struct Extra<'a> {
    parts: u32,
    eps: f32,
    buffers: [&'a wgpu::Buffer; 3],
}

#[allow(clippy::too_many_arguments)]
fn launch(ctx: &GpuContext, encoder: &mut Recorder, entry: &'static str, x: &GpuTensor, rows: usize, [g, u]: [&GpuTensor; 2], outs: &[&GpuTensor], extra: Option<Extra>) -> Result<(), GpuError> {
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
        // `mlp`'s outputs (its parts, S) are checked by encode_mlp.
        if extra.is_none() {
            check_len(OP, "the output", out, rows * n)?;
        }
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
    let norm = extra.is_some() as u64;
    let pipeline = ctx.pipeline(kernel.name, kernel.source, entry, &[("ROWS", rows as u64), ("THREADS", THREADS as u64), ("NORM", norm)]);
    let (parts, eps) = extra.as_ref().map_or((0, 0.0), |e| (e.parts, e.eps));
    let uniform = ctx.uniform(&Params { m: rows as u32, n: n as u32, k: k as u32, parts, eps, _pad: [0; 3] });
    let mut buffers = vec![&x.buffer, &g.buffer, &outs[0].buffer, &uniform, &u.buffer];
    buffers.extend(outs.get(1).map(|o| &o.buffer));
    if let Some(e) = &extra {
        buffers.extend(e.buffers);
    }
    let bind = ctx.bind(&pipeline, &buffers);
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}
