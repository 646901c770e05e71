//! Launcher for `shaders/attention.wgsl`: fused causal multi-head attention with grouped-query heads
//! (scores, online softmax, P·V over tiles of keys), keeping only each row's logsumexp for the
//! backward pass, which recomputes the probabilities (`shaders/attention_backward.wgsl`): O(T)
//! memory, not O(T²). On a CPU adapter the shader's `decode` entry runs instead where it fits
//! ([`Kernel`]): a workgroup per (token, key/value head) for its whole group of query heads, four
//! values a load, 4 barriers. CPU reference: `reference::attention`.

use std::sync::OnceLock;

use super::{check_f32, check_len, check_u32, for_format, grid_rows, renamed_weight_kernels, GpuContext, GpuError, GpuTensor, Kernel1d, Recorder};
use crate::reference::attention::Heads;

const WGSL: &str = include_str!("../../shaders/attention.wgsl");
const REDUCE: &str = include_str!("../../shaders/workgroup_reduce.wgsl");
/// Where attention.wgsl's `decode_o` part (which reads a weight) begins.
const O_PART: &str = "// ---- `decode_o`";

/// attention.wgsl without its `decode_o` part, + workgroup_reduce.wgsl: `main` and `decode`.
fn source() -> &'static str {
    static SOURCE: OnceLock<String> = OnceLock::new();
    SOURCE.get_or_init(|| format!("{}{REDUCE}", &WGSL[..WGSL.find(O_PART).expect("attention.wgsl marks its decode_o part")]))
}

/// The whole of attention.wgsl + workgroup_reduce.wgsl + the format's seam for Wo (`wo`, binding
/// 6), per format: `decode_o`.
fn o_kernels() -> &'static [Kernel1d; 6] {
    static KERNELS: OnceLock<[Kernel1d; 6]> = OnceLock::new();
    KERNELS.get_or_init(|| renamed_weight_kernels("attention_o", &format!("{WGSL}{REDUCE}"), "wo", 6))
}
/// Largest head_dim the kernel handles (one workgroup of 256 threads holds a query row).
pub const MAX_HEAD_DIM: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    tokens: u32,
    past: u32,
    q_heads: u32,
    kv_heads: u32,
    head_dim: u32,
    group: u32,
    d_model: u32,
    scale: f32,
}

/// Values in the `lse` buffer (and in the backward's scratch): one per (query head, token),
/// [Hq, tokens].
pub fn lse_len(tokens: usize, heads: &Heads) -> usize {
    heads.q_heads * tokens
}

fn shape(detail: String) -> GpuError {
    GpuError::Shape { op: "attention", detail }
}

/// Record attention for `tokens` new queries at positions `past .. past + tokens`:
/// q [tokens, Hq·Dh]; k, v with at least S = past + tokens rows of [Hkv·Dh] (a KV cache may be
/// longer; later rows are ignored); out [tokens, Hq·Dh]; lse (at least [`lse_len`] values) receives
/// lse[h, t] = log Σ_{s ≤ past + t} exp(q[t, h]·k[s, h']/√Dh), row-major [Hq, tokens].
/// Any S works (keys stream through workgroup memory a tile at a time); Dh ≤ `MAX_HEAD_DIM`.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    q: &GpuTensor,
    k: &GpuTensor,
    v: &GpuTensor,
    out: &GpuTensor,
    lse: &GpuTensor,
    tokens: usize,
    past: usize,
    heads: &Heads,
) -> Result<(), GpuError> {
    encode_with(ctx, encoder, [q, k, v, out, lse], tokens, past, heads, Kernel::Auto)
}

/// The output projection o taken by the `decode_o` entry: Wo [D, Hq·Dh] (Linear [out, in], any
/// format) and where its Hkv partial products go, proj [Hkv, tokens, D].
pub struct OutProj<'a> {
    pub wo: &'a GpuTensor,
    pub proj: &'a GpuTensor,
}

/// [`encode`] with the `decode` entry (it must fit: [`decode_fits`]) followed in the same dispatch
/// by o: proj[h'] = out[:, group h'] · Wo[:, group h']ᵀ for each key/value head h', the Hkv
/// partial products of out · Woᵀ (sum them in order). Returns Hkv. For a decode step on a CPU
/// device, where a dispatch costs more than o's work.
#[allow(clippy::too_many_arguments)]
pub fn encode_o(ctx: &GpuContext, encoder: &mut Recorder, bufs: [&GpuTensor; 5], o: &OutProj, tokens: usize, past: usize, heads: &Heads) -> Result<usize, GpuError> {
    let qd = heads.q_heads * heads.head_dim;
    if o.wo.shape.len() != 2 || o.wo.shape[1] != qd {
        return Err(shape(format!("Wo {:?} must be [D, {qd}] (Linear [out, in] over the query heads)", o.wo.shape)));
    }
    check_f32("attention", "o's partial products", o.proj)?;
    check_len("attention", "o's partial products", o.proj, heads.kv_heads * tokens * o.wo.shape[0])?;
    launch(ctx, encoder, bufs, tokens, past, heads, Kernel::Decode, Some(o))?;
    Ok(heads.kv_heads)
}

/// Which entry point of attention.wgsl records attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// `decode` on a CPU adapter where it fits ([`decode_fits`]), else `main`: what [`encode`]
    /// does. On lavapipe `decode` is the faster of the two for a generated token (attention 1.3 →
    /// 0.7 ms a token on the default model) and for 128-token prompts and training windows too
    /// (prefill 15–20% faster a token; BENCHMARKS.md, session 13).
    Auto,
    /// `main`: a workgroup per (token, query head), keys in tiles with an online softmax.
    Tiled,
    /// `decode`: a workgroup per (token, key/value head) for its whole group of query heads (tests
    /// run it on any device; `GpuError::Shape` where it does not fit).
    Decode,
}

/// The sizes of the `decode` entry's arrays in attention.wgsl: query heads per key/value head
/// (`DECODE_GROUP_MAX`), the group's query rows (`qs`, in floats) and every visible key's score for
/// the group (`sc`).
const DECODE_GROUP_MAX: usize = 8;
const DECODE_QUERY_FLOATS: usize = 1024;
const DECODE_SCORES: usize = 2048;

/// Whether the `decode` entry point holds this case: at most 8 query heads per key/value head,
/// group · head_dim ≤ 1024 and head_dim a multiple of 4 (its query rows and vec4 loads), and
/// group · (past + tokens) ≤ 2048 (every visible key's score in workgroup memory).
pub fn decode_fits(tokens: usize, past: usize, heads: &Heads) -> bool {
    let group = heads.q_heads / heads.kv_heads.max(1);
    group <= DECODE_GROUP_MAX && group * heads.head_dim <= DECODE_QUERY_FLOATS && heads.head_dim.is_multiple_of(4) && group * (past + tokens) <= DECODE_SCORES
}

/// [`encode`] with the entry point chosen by `kernel`; `bufs` are q, k, v, out, lse.
#[allow(clippy::too_many_arguments)]
pub fn encode_with(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    bufs: [&GpuTensor; 5],
    tokens: usize,
    past: usize,
    heads: &Heads,
    kernel: Kernel,
) -> Result<(), GpuError> {
    launch(ctx, encoder, bufs, tokens, past, heads, kernel, None)
}

#[allow(clippy::too_many_arguments)]
fn launch(ctx: &GpuContext, encoder: &mut Recorder, bufs: [&GpuTensor; 5], tokens: usize, past: usize, heads: &Heads, kernel: Kernel, o: Option<&OutProj>) -> Result<(), GpuError> {
    let [q, k, v, out, lse] = bufs;
    let Heads { q_heads: hq, kv_heads: hkv, head_dim: dh } = *heads;
    if hq == 0 || hkv == 0 || hq % hkv != 0 {
        return Err(shape(format!("{hq} query heads are not a whole multiple of {hkv} key/value heads")));
    }
    if dh == 0 || dh > MAX_HEAD_DIM {
        return Err(shape(format!("head_dim {dh} is outside the supported 1..={MAX_HEAD_DIM}")));
    }
    let seq = past + tokens;
    check_len("attention", "q", q, tokens * hq * dh)?;
    check_len("attention", "out", out, tokens * hq * dh)?;
    check_len("attention", "k", k, seq * hkv * dh)?;
    check_len("attention", "v", v, seq * hkv * dh)?;
    check_len("attention", "lse", lse, lse_len(tokens, heads))?;
    check_u32("attention", "q's length", tokens * hq * dh)?;
    check_u32("attention", "k's length", seq * hkv * dh)?;
    if tokens == 0 {
        return Ok(());
    }
    let params = Params {
        tokens: tokens as u32,
        past: past as u32,
        q_heads: hq as u32,
        kv_heads: hkv as u32,
        head_dim: dh as u32,
        group: (hq / hkv) as u32,
        d_model: o.map_or(0, |o| o.wo.shape[0] as u32),
        // Exactly the reference's scale.
        scale: 1.0 / (dh as f32).sqrt(),
    };
    let decode = match kernel {
        Kernel::Auto => ctx.is_cpu() && decode_fits(tokens, past, heads),
        Kernel::Tiled => false,
        Kernel::Decode if decode_fits(tokens, past, heads) => true,
        Kernel::Decode => return Err(shape(format!("{tokens} tokens after {past} with {hq} query heads, {hkv} key/value heads of {dh} do not fit the decode kernel"))),
    };
    // decode: 32 threads (a CPU's workgroup; see the shader), GROUP unrolls its per-head loops.
    let constants = [("WG", 32), ("GROUP", (hq / hkv) as u64)];
    let (pipeline, rows) = match (decode, o) {
        (true, Some(o)) => {
            let kernel = for_format(o_kernels(), o.wo.format);
            (ctx.pipeline(kernel.name, kernel.source, "decode_o", &constants), tokens * hkv)
        }
        (true, None) => (ctx.pipeline("attention", source(), "decode", &constants), tokens * hkv),
        (false, _) => (ctx.pipeline("attention", source(), "main", &[("WG", super::row_workgroup(ctx, dh) as u64)]), tokens * hq),
    };
    let uniform = ctx.uniform(&params);
    let mut buffers = vec![&q.buffer, &k.buffer, &v.buffer, &out.buffer, &lse.buffer, &uniform];
    if let Some(o) = o {
        buffers.extend([&o.wo.buffer, &o.proj.buffer]);
    }
    let bind = ctx.bind(&pipeline, &buffers);
    let (gx, gy) = grid_rows(rows, ctx.max_workgroups_per_dim());
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}

const BACKWARD_SOURCE: &str = concat!(include_str!("../../shaders/attention_backward.wgsl"), include_str!("../../shaders/workgroup_reduce.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BackwardParams {
    tokens: u32,
    q_heads: u32,
    kv_heads: u32,
    head_dim: u32,
    group: u32,
    scale: f32,
    _pad: [u32; 2],
}

/// Record the backward of [`encode`] for training, without a KV cache (past = 0, S = tokens):
/// given q [tokens, Hq·Dh], k, v [tokens, Hkv·Dh], the forward's `out` [tokens, Hq·Dh] and `lse`
/// [Hq, tokens], and the output gradient `dout` [tokens, Hq·Dh], write dq [tokens, Hq·Dh] and dk, dv
/// [tokens, Hkv·Dh] (overwritten, not accumulated; the query heads of a group are summed into their
/// key/value head). The probabilities are recomputed tile by tile, P = exp(q·kᵀ/√Dh − lse).
/// `delta` (at least [`lse_len`] values, contents ignored) receives D = rowsum(dout ⊙ out) [Hq, tokens].
/// `shaders/attention_backward.wgsl`, reference `reference::attention::attention_backward`.
/// Two dispatches: D and dq per (token, query head), then dk and dv per (token, key/value head).
#[allow(clippy::too_many_arguments)]
pub fn encode_backward(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    q: &GpuTensor,
    k: &GpuTensor,
    v: &GpuTensor,
    out: &GpuTensor,
    lse: &GpuTensor,
    dout: &GpuTensor,
    dq: &GpuTensor,
    dk: &GpuTensor,
    dv: &GpuTensor,
    delta: &GpuTensor,
    tokens: usize,
    heads: &Heads,
) -> Result<(), GpuError> {
    const OP: &str = "attention_backward";
    let shape = |detail: String| GpuError::Shape { op: OP, detail };
    let Heads { q_heads: hq, kv_heads: hkv, head_dim: dh } = *heads;
    if hq == 0 || hkv == 0 || hq % hkv != 0 {
        return Err(shape(format!("{hq} query heads are not a whole multiple of {hkv} key/value heads")));
    }
    if dh == 0 || dh > MAX_HEAD_DIM {
        return Err(shape(format!("head_dim {dh} is outside the supported 1..={MAX_HEAD_DIM}")));
    }
    let (q_len, kv_len) = (tokens * hq * dh, tokens * hkv * dh);
    let row_len = lse_len(tokens, heads);
    for (what, t, need) in [
        ("q", q, q_len),
        ("out", out, q_len),
        ("dout", dout, q_len),
        ("dq", dq, q_len),
        ("k", k, kv_len),
        ("v", v, kv_len),
        ("dk", dk, kv_len),
        ("dv", dv, kv_len),
        ("lse", lse, row_len),
        ("delta", delta, row_len),
    ] {
        check_len(OP, what, t, need)?;
    }
    check_u32(OP, "q's length", q_len)?;
    if tokens == 0 {
        return Ok(());
    }
    let params = BackwardParams {
        tokens: tokens as u32,
        q_heads: hq as u32,
        kv_heads: hkv as u32,
        head_dim: dh as u32,
        group: (hq / hkv) as u32,
        // Exactly the forward's and the reference's scale.
        scale: 1.0 / (dh as f32).sqrt(),
        _pad: [0; 2],
    };
    let uniform = ctx.uniform(&params);
    let max = ctx.max_workgroups_per_dim();

    let pipeline = ctx.pipeline("attention_backward", BACKWARD_SOURCE, "dq_main", &[("WG", super::row_workgroup(ctx, dh) as u64)]);
    let bind = ctx.bind_at(
        &pipeline,
        &[
            (0, &q.buffer),
            (1, &k.buffer),
            (2, &v.buffer),
            (3, &out.buffer),
            (4, &lse.buffer),
            (5, &dout.buffer),
            (6, &delta.buffer),
            (7, &dq.buffer),
            (10, &uniform),
        ],
    );
    let (gx, gy) = grid_rows(tokens * hq, max);
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));

    let pipeline = ctx.pipeline("attention_backward", BACKWARD_SOURCE, "dkv_main", &[("WG", super::row_workgroup(ctx, dh) as u64)]);
    let bind = ctx.bind_at(
        &pipeline,
        &[
            (0, &q.buffer),
            (1, &k.buffer),
            (2, &v.buffer),
            (4, &lse.buffer),
            (5, &dout.buffer),
            (6, &delta.buffer),
            (8, &dk.buffer),
            (9, &dv.buffer),
            (10, &uniform),
        ],
    );
    let (gx, gy) = grid_rows(tokens * hkv, max);
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}
