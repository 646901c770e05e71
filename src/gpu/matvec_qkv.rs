//! Launcher for `shaders/matvec_qkv.wgsl`: a Llama layer's q, k and v for a few new tokens (a decode
//! step) in one dispatch, RoPE applied to q and k, k and v written into the KV cache at their
//! positions. It replaces the q and k/v products, the RoPE dispatch and the two cache copies where a
//! dispatch costs more than the work it saves: on CPU devices ([`fits`]). The three weights are in one
//! format, read through that format's `weight_<format>.wgsl`, as itself (Wq) and renamed (Wk, Wv).
//! [`encode_normed`] also takes the block's input norm from the residual stream (the shader's entry
//! `normed`), so the residual + norm dispatch before it is not needed; [`encode_head`] runs a decode
//! step's last residual, final norm and LM head the same way (entry `head`).
//! CPU reference: `reference::matvec_qkv` (after `reference::residual_norm` for `normed`).

use std::sync::OnceLock;

use super::matvec_pair::Norm;
use super::{check_f32, check_len, check_u32, for_format, grid_rows, multi_weight_kernels, rope, GpuContext, GpuError, GpuTensor, Kernel1d, Recorder};

/// Rows of x the kernel takes (its accumulators per thread).
pub const MAX_ROWS: usize = 8;
/// Threads per workgroup, two rotation pairs (four columns) each (matvec's CPU split).
const THREADS: usize = 32;
const OP: &str = "matvec_qkv";

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    nq: u32,
    nkv: u32,
    k: u32,
    half: u32,
    row0: u32,
    gq: u32,
    gkv: u32,
    parts: u32,
    eps: f32,
    _pad: [u32; 2],
}

/// Values of x [rows, K] the `normed` entry stages in workgroup memory (the shader's STAGED).
const STAGED: usize = 2048;
/// Storage buffers the `normed` entry binds (a device offering fewer runs the norm apart): 10, what
/// Chrome's SwiftShader offers, because the RoPE table is a uniform.
const NORMED_STORAGE_BUFFERS: u32 = 10;
/// (cos, sin) pairs the shader's uniform RoPE table holds: rows · head_dim / 2 at most.
const TABLE_PAIRS: usize = 512;

/// matvec_qkv.wgsl's shared part and stage_norm.wgsl (`normed`'s norm), then matvec_qkv.wgsl's
/// per-weight part with the format's seam for Wq (binding 1), Wk (`wk`, binding 4) and Wv (`wv`,
/// binding 5), per format.
fn kernels() -> &'static [Kernel1d; 6] {
    static KERNELS: OnceLock<[Kernel1d; 6]> = OnceLock::new();
    KERNELS.get_or_init(|| {
        let source = include_str!("../../shaders/matvec_qkv.wgsl");
        let at = source.find("// ---- per weight").expect("matvec_qkv.wgsl marks its per-weight part");
        let shared = format!("{}{}", &source[..at], include_str!("../../shaders/stage_norm.wgsl"));
        multi_weight_kernels(OP, &shared, &source[at..], &[("wk", 4), ("wv", 5)])
    })
}

/// The three projections' weights, Linear [out, in] each.
pub struct Weights<'a> {
    pub q: &'a GpuTensor,
    pub k: &'a GpuTensor,
    pub v: &'a GpuTensor,
}

/// Where the results go: q [rows, Nq], and the caches [positions, Nkv] whose rows pos0.. receive k
/// and v.
pub struct Outputs<'a> {
    pub q: &'a GpuTensor,
    pub k_cache: &'a GpuTensor,
    pub v_cache: &'a GpuTensor,
}

/// Whether the kernel runs `rows` rows by these weights on this device: a CPU device (on a GPU a
/// dispatch is cheap and the separate kernels split K across lanes), at most [`MAX_ROWS`] rows, and
/// the shapes [`encode`] takes.
pub fn fits(ctx: &GpuContext, rows: usize, w: &Weights, head_dim: usize) -> bool {
    ctx.is_cpu() && (1..=MAX_ROWS).contains(&rows) && rows * head_dim / 2 <= TABLE_PAIRS && shapes(w, head_dim).is_ok()
}

/// Whether [`encode_normed`] runs `rows` rows by these weights on this device: [`fits`], rows · K
/// within the staged memory, and the 10 storage buffers it binds within the device's limit.
pub fn fits_normed(ctx: &GpuContext, rows: usize, w: &Weights, head_dim: usize) -> bool {
    fits(ctx, rows, w, head_dim) && rows * w.q.shape[1] <= STAGED && ctx.device.limits().max_storage_buffers_per_shader_stage >= NORMED_STORAGE_BUFFERS
}

/// (Nq, Nkv, K) of the weights, or why the kernel does not take them.
fn shapes(w: &Weights, head_dim: usize) -> Result<(usize, usize, usize), String> {
    let (&[nq, k], &[nkv, kk]) = (&w.q.shape[..], &w.k.shape[..]) else {
        return Err(format!("the weights {:?} and {:?} must be matrices [out, in]", w.q.shape, w.k.shape));
    };
    if w.v.shape != w.k.shape || kk != k || w.k.format != w.q.format || w.v.format != w.q.format {
        return Err(format!(
            "Wq ({:?}, {}), Wk ({:?}, {}) and Wv ({:?}, {}) must share their input size and format, and Wk and Wv their shape",
            w.q.shape, w.q.format, w.k.shape, w.k.format, w.v.shape, w.v.format
        ));
    }
    if k % 4 != 0 || head_dim == 0 || head_dim % 2 != 0 || nq % head_dim != 0 || nkv % head_dim != 0 || head_dim > rope::MAX_HEAD_DIM {
        return Err(format!("inputs of {k} values and outputs of {nq} and {nkv} in heads of {head_dim}: takes a multiple of 4 inputs and whole heads of an even head_dim"));
    }
    Ok((nq, nkv, k))
}

/// Record q = rope(x·Wqᵀ), k_cache[pos0 + m] = rope(x[m]·Wkᵀ), v_cache[pos0 + m] = x[m]·Wvᵀ for x
/// [rows, K], row m at position pos0 + m (RoPE with `theta`, the CPU-computed angle table of
/// `gpu::rope`). `GpuError::Shape` for shapes the kernel does not take (see [`fits`], less the device).
#[allow(clippy::too_many_arguments)]
pub fn encode(ctx: &GpuContext, encoder: &mut Recorder, x: &GpuTensor, rows: usize, w: &Weights, head_dim: usize, pos0: usize, theta: f32, out: &Outputs) -> Result<(), GpuError> {
    launch(ctx, encoder, x, None, rows, w, head_dim, pos0, theta, out)
}

/// [`encode`] from the residual stream: x = rmsnorm(norm.x + Σ_{j < norm.parts} norm.add[j]) ·
/// norm.weight (parts may be 0), and norm.s = norm.x + Σ add stored. `GpuError::Shape` for shapes
/// [`fits_normed`] refuses (less the device).
#[allow(clippy::too_many_arguments)]
pub fn encode_normed(ctx: &GpuContext, encoder: &mut Recorder, norm: &Norm, rows: usize, w: &Weights, head_dim: usize, pos0: usize, theta: f32, out: &Outputs) -> Result<(), GpuError> {
    launch(ctx, encoder, norm.x, Some(norm), rows, w, head_dim, pos0, theta, out)
}

/// Workgroups of the `head` entry at most: each stages the norm once, then walks its column blocks.
const HEAD_WORKGROUPS: usize = 32;
/// Storage buffers the `head` entry binds (x, W, C, the parts, the norm's weight, S): WebGPU's
/// minimum is 8.
const HEAD_STORAGE_BUFFERS: u32 = 6;

/// Whether [`encode_head`] runs `rows` rows by the head `w` on this device: a CPU device (as
/// [`fits`]), at most [`MAX_ROWS`] rows, `w` a matrix [N, K] with K % 4 = 0 and rows · K within the
/// staged memory.
pub fn fits_head(ctx: &GpuContext, rows: usize, w: &GpuTensor) -> bool {
    ctx.is_cpu()
        && (1..=MAX_ROWS).contains(&rows)
        && matches!(w.shape[..], [_, k] if k % 4 == 0 && rows * k <= STAGED)
        && ctx.device.limits().max_storage_buffers_per_shader_stage >= HEAD_STORAGE_BUFFERS
}

/// Record a decode step's final norm and LM head in one dispatch (the shader's entry `head`): h =
/// rmsnorm(norm.x + Σ_{j < norm.parts} norm.add[j]) · norm.weight, norm.s = norm.x + Σ add, and
/// out[m · ldc + col0 + n] = h[m] · w[n] for the N rows of `w` [N, K] (one part of a vocabulary split
/// across buffers writes its own column block of the logits). `GpuError::Shape` for shapes
/// [`fits_head`] refuses (less the device) and for a column block outside `out`.
#[allow(clippy::too_many_arguments)]
pub fn encode_head(ctx: &GpuContext, encoder: &mut Recorder, norm: &Norm, rows: usize, w: &GpuTensor, out: &GpuTensor, col0: usize, ldc: usize) -> Result<(), GpuError> {
    let shape = |detail: String| GpuError::Shape { op: OP, detail };
    let &[n, k] = &w.shape[..] else {
        return Err(shape(format!("the head {:?} must be a matrix [vocabulary, hidden]", w.shape)));
    };
    if k % 4 != 0 || !(1..=MAX_ROWS).contains(&rows) || rows * k > STAGED {
        return Err(shape(format!("{rows} rows of {k} values: the head takes 1..={MAX_ROWS} rows, a multiple of 4 values, at most {STAGED} values in all")));
    }
    if col0 + n > ldc {
        return Err(shape(format!("columns {col0}..{} of the head's output do not fit its rows of {ldc}", col0 + n)));
    }
    check_f32(OP, "x", norm.x)?;
    check_len(OP, "x", norm.x, rows * k)?;
    norm.check(OP, rows, k)?;
    check_f32(OP, "the logits", out)?;
    check_len(OP, "the logits", out, (rows - 1) * ldc + col0 + n)?;
    check_u32(OP, "the head's values", n * k)?;
    check_u32(OP, "the logits' length", rows * ldc)?;
    norm.check_outputs(OP, "the logits", &[&out.buffer])?;
    let groups = n.div_ceil(THREADS * 4).min(HEAD_WORKGROUPS);
    let (gx, gy) = grid_rows(groups, ctx.max_workgroups_per_dim());
    let kernel = for_format(kernels(), w.format);
    let pipeline = ctx.pipeline(kernel.name, kernel.source, "head", &[("ROWS", rows as u64), ("THREADS", THREADS as u64), ("NORM", 1)]);
    let uniform = ctx.uniform(&Params {
        rows: rows as u32,
        nq: n as u32,
        nkv: ldc as u32,
        k: k as u32,
        half: 0,
        row0: col0 as u32,
        gq: groups as u32,
        gkv: 0,
        parts: norm.parts as u32,
        eps: norm.eps,
        _pad: [0; 2],
    });
    // Bindings 0–3 and 9–11 (the entry does not use the caches, the table or Wk, Wv).
    let bind = ctx.bind_at(&pipeline, &[(0, &norm.x.buffer), (1, &w.buffer), (2, &out.buffer), (3, &uniform), (9, &norm.add.buffer), (10, &norm.weight.buffer), (11, &norm.s.buffer)]);
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn launch(ctx: &GpuContext, encoder: &mut Recorder, x: &GpuTensor, norm: Option<&Norm>, rows: usize, w: &Weights, head_dim: usize, pos0: usize, theta: f32, out: &Outputs) -> Result<(), GpuError> {
    let shape = |detail: String| GpuError::Shape { op: OP, detail };
    let (nq, nkv, k) = shapes(w, head_dim).map_err(shape)?;
    if !(1..=MAX_ROWS).contains(&rows) {
        return Err(shape(format!("{rows} rows: takes 1..={MAX_ROWS}")));
    }
    if rows * head_dim / 2 > TABLE_PAIRS {
        return Err(shape(format!("{rows} rows of heads of {head_dim}: the RoPE table holds at most {TABLE_PAIRS} (cos, sin) pairs")));
    }
    if theta.is_nan() || theta <= 0.0 {
        return Err(shape(format!("theta must be positive, got {theta}")));
    }
    check_f32(OP, "x", x)?;
    check_len(OP, "x", x, rows * k)?;
    check_f32(OP, "q", out.q)?;
    check_len(OP, "q", out.q, rows * nq)?;
    for (what, cache) in [("the key cache", out.k_cache), ("the value cache", out.v_cache)] {
        check_f32(OP, what, cache)?;
        check_len(OP, what, cache, (pos0 + rows) * nkv)?;
    }
    check_u32(OP, "the caches' length", (pos0 + rows) * nkv)?;
    let written = [&out.q.buffer, &out.k_cache.buffer, &out.v_cache.buffer];
    if let Some(n) = norm {
        if rows * k > STAGED {
            return Err(shape(format!("{rows} rows of {k} values: the norm stages at most {STAGED} values")));
        }
        let storage = ctx.device.limits().max_storage_buffers_per_shader_stage;
        if storage < NORMED_STORAGE_BUFFERS {
            return Err(shape(format!("the norm's entry binds {NORMED_STORAGE_BUFFERS} storage buffers, this device {storage}: run the norm apart")));
        }
        n.check(OP, rows, k)?;
        n.check_outputs(OP, "q, the two caches", &written)?;
    } else if !super::matvec_pair::all_different(&written) {
        return Err(shape("q and the two caches must be different buffers".into()));
    }
    let half = head_dim / 2;
    let cols = THREADS * 4;
    let (gq, gkv) = (nq.div_ceil(cols), nkv.div_ceil(cols));
    let max = ctx.max_workgroups_per_dim();
    let (gx, gy) = grid_rows(gq + 2 * gkv, max);
    if gy > max {
        return Err(shape(format!("{} workgroups need a grid ({gx}, {gy}), over this GPU's {max} per dimension", gq + 2 * gkv)));
    }
    // The table first, then the uniform: the same order every step, so a `DispatchCache` reuses both.
    let mut table = rope::cos_sin(rows, head_dim, pos0, theta);
    table.resize(2 * TABLE_PAIRS, 0.0);
    let table = ctx.uniform_constant(&table);
    let kernel = for_format(kernels(), w.q.format);
    let entry = if norm.is_some() { "normed" } else { "main" };
    let pipeline = ctx.pipeline(kernel.name, kernel.source, entry, &[("ROWS", rows as u64), ("THREADS", THREADS as u64), ("NORM", norm.is_some() as u64)]);
    let uniform = ctx.uniform(&Params {
        rows: rows as u32,
        nq: nq as u32,
        nkv: nkv as u32,
        k: k as u32,
        half: half as u32,
        row0: pos0 as u32,
        gq: gq as u32,
        gkv: gkv as u32,
        parts: norm.map_or(0, |n| n.parts as u32),
        eps: norm.map_or(0.0, |n| n.eps),
        _pad: [0; 2],
    });
    let mut buffers = vec![&x.buffer, &w.q.buffer, &out.q.buffer, &uniform, &w.k.buffer, &w.v.buffer, &out.k_cache.buffer, &out.v_cache.buffer, &table];
    if let Some(n) = norm {
        buffers.extend([&n.add.buffer, &n.weight.buffer, &n.s.buffer]);
    }
    let bind = ctx.bind(&pipeline, &buffers);
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}
