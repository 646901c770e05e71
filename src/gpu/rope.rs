//! Launcher for `shaders/rope.wgsl`: rotary position embedding applied in place ("rotate half"),
//! forward and backward in one kernel (the backward rotates by −angle: `sign` = −1 in its uniform).
//! Each call rotates one or two tensors ([`Targets`]: q and k of a layer in one dispatch, entry
//! `main_pair`) with the same angles. CPU reference: `reference::rope`.

use super::{check_u32, kernel_1d, launch_1d_entry, GpuContext, GpuError, GpuTensor, Kernel1d, Recorder};

const KERNEL: Kernel1d = kernel_1d!("rope");
/// Largest head_dim accepted, a sanity bound (real models use ≤ 256). The kernel itself has no limit:
/// the angles come from a CPU-computed table in a storage buffer (an earlier kernel reduced the
/// angles itself from frequencies held in its uniform, which bounded head_dim; that is gone).
pub const MAX_HEAD_DIM: usize = 1025;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    half: u32,
    head_dim: u32,
    heads: u32,
    pos0: u32,
    sign: f32,
    n_x: u32,
    heads_y: u32,
}

/// What one call rotates: (tensor, heads) pairs, one or two (a layer's q and k), all over the same
/// tokens and head_dim; each tensor may be longer than tokens · heads · head_dim values.
pub type Targets<'a> = &'a [(&'a GpuTensor, usize)];

/// The rotation frequencies 1 / theta^(2i / head_dim), i < head_dim / 2, in f32 exactly as
/// `reference::rope::inv_freq` computes them.
pub fn inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect()
}

/// Which way a dispatch rotates.
#[derive(Clone, Copy)]
enum Direction {
    Forward,
    Backward,
}

impl Direction {
    /// The op name in errors (what callers and tests match on).
    fn op(self) -> &'static str {
        match self {
            Direction::Forward => "rope",
            Direction::Backward => "rope_backward",
        }
    }

    fn sign(self) -> f32 {
        match self {
            Direction::Forward => 1.0,
            Direction::Backward => -1.0,
        }
    }
}

/// Record the rotation of each target x [tokens, heads, head_dim] in place, token t at position
/// `pos0 + t` (only the first tokens · heads · head_dim values of x are touched).
pub fn encode(ctx: &GpuContext, encoder: &mut Recorder, x: Targets, tokens: usize, head_dim: usize, pos0: usize, theta: f32) -> Result<(), GpuError> {
    let shape = Shape { tokens, head_dim, pos0, theta };
    rotate(ctx, encoder, Direction::Forward, x, shape, || cos_sin(tokens, head_dim, pos0, theta))
}

/// Record the backward of [`encode`]: rotate each gradient dy [tokens, heads, head_dim] back in place
/// (by −angle, the same angles as the forward: the same CPU-computed table), leaving dx in dy.
/// Reference `reference::rope::rope_backward`.
pub fn encode_backward(ctx: &GpuContext, encoder: &mut Recorder, dy: Targets, tokens: usize, head_dim: usize, pos0: usize, theta: f32) -> Result<(), GpuError> {
    let shape = Shape { tokens, head_dim, pos0, theta };
    rotate(ctx, encoder, Direction::Backward, dy, shape, || cos_sin(tokens, head_dim, pos0, theta))
}

/// (cos a, sin a) for a = f32(pos0 + t) · inv_freq_i, [tokens, half] pairs, in f32 exactly as
/// `reference::rope` computes them (transformers' f32 cos/sin cache does the same).
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

/// The rotation's shape: `tokens` rows of heads of `head_dim`, the first at position `pos0`.
struct Shape {
    tokens: usize,
    head_dim: usize,
    pos0: usize,
    theta: f32,
}

/// Validate a rotation of `targets`, then record it with the (cos, sin) table `table()` (only built
/// when there is something to rotate).
fn rotate(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    direction: Direction,
    targets: Targets,
    s: Shape,
    table: impl FnOnce() -> Vec<f32>,
) -> Result<(), GpuError> {
    let op = direction.op();
    let Shape { tokens, head_dim, pos0, theta } = s;
    let (x, heads, y) = match targets {
        [(x, heads)] => (*x, *heads, None),
        [(x, heads), (y, heads_y)] => (*x, *heads, Some((*y, *heads_y))),
        _ => return Err(GpuError::Shape { op, detail: format!("rotates one or two tensors in a call, got {}", targets.len()) }),
    };
    for (x, heads) in targets {
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
        check_u32(op, "x's length", need)?;
    }
    if let Some((y, _)) = y {
        if y.buffer == x.buffer {
            return Err(GpuError::Shape { op, detail: "the two tensors it rotates must be different buffers".into() });
        }
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
    check_u32(op, "the last position", pos0 + tokens)?;
    let half = head_dim / 2;
    let n_x = tokens * heads * half;
    let heads_y = y.map_or(0, |(_, h)| h);
    let n = n_x + tokens * heads_y * half;
    check_u32(op, "the pair count", n)?;
    if n == 0 {
        return Ok(());
    }
    // The table first, then the uniform (inside launch_1d_entry): the same order every step, so a
    // `DispatchCache` reuses both buffers.
    let table = ctx.storage_constant(&table());
    let params = |n| Params {
        n,
        half: half as u32,
        head_dim: head_dim as u32,
        heads: heads as u32,
        pos0: pos0 as u32,
        sign: direction.sign(),
        n_x: n_x as u32,
        heads_y: heads_y as u32,
    };
    match y {
        None => launch_1d_entry(ctx, encoder, op, &KERNEL, "main", n, &[&x.buffer, &table], &[], params),
        Some((y, _)) => launch_1d_entry(ctx, encoder, op, &KERNEL, "main_pair", n, &[&x.buffer, &table], &[&y.buffer], params),
    }
}

/// The (cos, sin) table of `batch` sequences of `seq` tokens laid end to end, each at positions
/// 0..seq (token t of the flat [batch · seq] rows sits at position t mod seq).
fn batched_table(batch: usize, seq: usize, head_dim: usize, theta: f32) -> Vec<f32> {
    cos_sin(seq, head_dim, 0, theta).repeat(batch)
}

/// [`encode`] over `batch` sequences of `seq` tokens stored back to back in each target x
/// [batch · seq, heads, head_dim], every sequence at positions 0..seq (training without a KV cache).
#[allow(clippy::too_many_arguments)]
pub fn encode_batched(ctx: &GpuContext, encoder: &mut Recorder, x: Targets, batch: usize, seq: usize, head_dim: usize, theta: f32) -> Result<(), GpuError> {
    let shape = Shape { tokens: batch * seq, head_dim, pos0: 0, theta };
    rotate(ctx, encoder, Direction::Forward, x, shape, || batched_table(batch, seq, head_dim, theta))
}

/// [`encode_backward`] over `batch` sequences of `seq` tokens stored back to back (see
/// [`encode_batched`]): rotates each gradient dy back in place.
#[allow(clippy::too_many_arguments)]
pub fn encode_backward_batched(ctx: &GpuContext, encoder: &mut Recorder, dy: Targets, batch: usize, seq: usize, head_dim: usize, theta: f32) -> Result<(), GpuError> {
    let shape = Shape { tokens: batch * seq, head_dim, pos0: 0, theta };
    rotate(ctx, encoder, Direction::Backward, dy, shape, || batched_table(batch, seq, head_dim, theta))
}

#[cfg(test)]
mod tests {
    /// The (cos, sin) table against an independent f64 computation, a = position · θ^(−2i/d), at late
    /// positions and Llama 3's θ = 5e5: only the f32 rounding of angles near 2025 rad (a few 1e-4)
    /// may separate them; a wrong exponent, position or order of (cos, sin) would be off by O(1).
    #[test]
    fn cos_sin_table_matches_f64_at_late_positions() {
        for (head_dim, theta) in [(128, 500_000.0f32), (64, 10_000.0), (7, 500_000.0)] {
            let (tokens, pos0) = (4, 2022);
            let half = head_dim / 2;
            let table = super::cos_sin(tokens, head_dim, pos0, theta);
            assert_eq!(table.len(), tokens * half * 2);
            let mut worst = 0.0f64;
            for t in 0..tokens {
                for i in 0..half {
                    let a = (pos0 + t) as f64 * (theta as f64).powf(-2.0 * i as f64 / head_dim as f64);
                    let (c, s) = (table[2 * (t * half + i)] as f64, table[2 * (t * half + i) + 1] as f64);
                    worst = worst.max((c - a.cos()).abs()).max((s - a.sin()).abs());
                }
            }
            assert!(worst <= 5e-4, "head_dim={head_dim} theta={theta}: table off the f64 angles by {worst}");
        }
    }
}
