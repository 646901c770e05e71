//! Launcher for `shaders/rope.wgsl`: rotary position embedding applied in place ("rotate half").
//! CPU reference: `reference::rope`.

use super::{check_u32, grid_1d, GpuContext, GpuError, GpuTensor, Recorder};

const SOURCE: &str = include_str!("../../shaders/rope.wgsl");
/// Largest head_dim (a generous bound; real models use ≤ 256).
pub const MAX_HEAD_DIM: usize = 1025;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    half: u32,
    head_dim: u32,
    heads: u32,
    pos0: u32,
    _pad: [u32; 3],
}

/// The rotation frequencies 1 / theta^(2i / head_dim), i < head_dim / 2, in f32 exactly as
/// `reference::rope::inv_freq` computes them.
pub fn inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect()
}

/// Record the rotation of `x` [tokens, heads, head_dim] in place, token t at position `pos0 + t`
/// (`x` may be longer; only its first tokens · heads · head_dim values are touched).
#[allow(clippy::too_many_arguments)]
pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    x: &GpuTensor,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    pos0: usize,
    theta: f32,
) -> Result<(), GpuError> {
    let Some((params, table)) = rotation_params("rope", x, tokens, heads, head_dim, pos0, theta)? else {
        return Ok(());
    };
    let n = params.n as usize;
    let pipeline = ctx.pipeline("rope", SOURCE, "main", &[]);
    let uniform = ctx.uniform(&params);
    let table = cos_sin_buffer(ctx, &table);
    let bind = ctx.bind(&pipeline, &[&x.buffer, &uniform, &table]);
    let (gx, gy) = grid_1d(n, ctx.limits().max_compute_workgroups_per_dimension);
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}

/// The (cos, sin) table as a storage buffer (reused across training steps, see `DispatchCache`).
fn cos_sin_buffer(ctx: &GpuContext, table: &[f32]) -> wgpu::Buffer {
    ctx.storage_constant(table)
}

/// (cos a, sin a) for a = f32(pos0 + t) · inv_freq_i, [tokens, half] pairs, in f32 exactly as
/// `reference::rope` computes them.
pub fn cos_sin(tokens: usize, head_dim: usize, pos0: usize, theta: f32) -> Vec<f32> {
    let freqs = inv_freq(head_dim, theta);
    let mut table = Vec::with_capacity(tokens * freqs.len() * 2);
    for t in 0..tokens {
        let pos = (pos0 + t) as f32;
        for f in &freqs {
            let (sin, cos) = (pos * f).sin_cos();
            table.extend([cos, sin]);
        }
    }
    table
}

/// Validate a rotation of `x` and build its uniform and (cos, sin) table; None when there is nothing
/// to rotate.
#[allow(clippy::too_many_arguments)]
fn rotation_params(
    op: &'static str,
    x: &GpuTensor,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    pos0: usize,
    theta: f32,
) -> Result<Option<(Params, Vec<f32>)>, GpuError> {
    let need = tokens * heads * head_dim;
    if x.len() < need {
        return Err(GpuError::Shape {
            op,
            detail: format!(
                "x {:?} holds fewer than tokens · heads · head_dim = {tokens} · {heads} · {head_dim} values",
                x.shape
            ),
        });
    }
    if theta.is_nan() || theta <= 0.0 {
        return Err(GpuError::Shape { op, detail: format!("theta must be positive, got {theta}") });
    }
    if head_dim > MAX_HEAD_DIM {
        return Err(GpuError::Shape {
            op,
            detail: format!("head_dim {head_dim} is beyond the supported {MAX_HEAD_DIM}"),
        });
    }
    check_u32(op, "x's length", need)?;
    check_u32(op, "the last position", pos0 + tokens)?;
    let half = head_dim / 2;
    let n = tokens * heads * half;
    if n == 0 {
        return Ok(None);
    }
    let params = Params {
        n: n as u32,
        half: half as u32,
        head_dim: head_dim as u32,
        heads: heads as u32,
        pos0: pos0 as u32,
        _pad: [0; 3],
    };
    Ok(Some((params, cos_sin(tokens, head_dim, pos0, theta))))
}

const BACKWARD_SOURCE: &str = include_str!("../../shaders/rope_backward.wgsl");

/// Record the backward of [`encode`]: rotate the gradient `dy` [tokens, heads, head_dim] back in place
/// (by −angle, the same angles as the forward: frequencies computed on the CPU), leaving dx in `dy`.
/// `shaders/rope_backward.wgsl`, reference `reference::rope::rope_backward`.
#[allow(clippy::too_many_arguments)]
pub fn encode_backward(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    dy: &GpuTensor,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    pos0: usize,
    theta: f32,
) -> Result<(), GpuError> {
    let Some((params, table)) = rotation_params("rope_backward", dy, tokens, heads, head_dim, pos0, theta)? else {
        return Ok(());
    };
    let pipeline = ctx.pipeline("rope_backward", BACKWARD_SOURCE, "main", &[]);
    let uniform = ctx.uniform(&params);
    let table = cos_sin_buffer(ctx, &table);
    let bind = ctx.bind(&pipeline, &[&dy.buffer, &uniform, &table]);
    let (gx, gy) = grid_1d(params.n as usize, ctx.limits().max_compute_workgroups_per_dimension);
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}

/// The (cos, sin) table of `batch` sequences of `seq` tokens laid end to end, each at positions
/// 0..seq (token t of the flat [batch · seq] rows sits at position t mod seq).
fn batched_table(batch: usize, seq: usize, head_dim: usize, theta: f32) -> Vec<f32> {
    cos_sin(seq, head_dim, 0, theta).repeat(batch)
}

/// [`encode`] over `batch` sequences of `seq` tokens stored back to back in `x`
/// [batch · seq, heads, head_dim], every sequence at positions 0..seq (training without a KV cache).
#[allow(clippy::too_many_arguments)]
pub fn encode_batched(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    x: &GpuTensor,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
    theta: f32,
) -> Result<(), GpuError> {
    batched(ctx, encoder, "rope", SOURCE, x, batch, seq, heads, head_dim, theta)
}

/// [`encode_backward`] over `batch` sequences of `seq` tokens stored back to back (see
/// [`encode_batched`]): rotates the gradient `dy` back in place.
#[allow(clippy::too_many_arguments)]
pub fn encode_backward_batched(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    dy: &GpuTensor,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
    theta: f32,
) -> Result<(), GpuError> {
    batched(ctx, encoder, "rope_backward", BACKWARD_SOURCE, dy, batch, seq, heads, head_dim, theta)
}

#[allow(clippy::too_many_arguments)]
fn batched(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    op: &'static str,
    source: &'static str,
    x: &GpuTensor,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
    theta: f32,
) -> Result<(), GpuError> {
    let Some((params, _)) = rotation_params(op, x, batch * seq, heads, head_dim, 0, theta)? else {
        return Ok(());
    };
    let pipeline = ctx.pipeline(op, source, "main", &[]);
    let uniform = ctx.uniform(&params);
    let table = cos_sin_buffer(ctx, &batched_table(batch, seq, head_dim, theta));
    let bind = ctx.bind(&pipeline, &[&x.buffer, &uniform, &table]);
    let (gx, gy) = grid_1d(params.n as usize, ctx.limits().max_compute_workgroups_per_dimension);
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}
