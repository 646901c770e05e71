//! Launcher for `shaders/rope.wgsl`: rotary position embedding applied in place ("rotate half").
//! CPU reference: `reference::rope`.

use super::{check_u32, grid_1d, GpuContext, GpuError, GpuTensor};

const SOURCE: &str = include_str!("../../shaders/rope.wgsl");
/// Largest head_dim: the uniform holds up to 512 frequencies.
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
    inv_freq: [[f32; 4]; 128],
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
    encoder: &mut wgpu::CommandEncoder,
    x: &GpuTensor,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    pos0: usize,
    theta: f32,
) -> Result<(), GpuError> {
    let need = tokens * heads * head_dim;
    if x.len() < need {
        return Err(GpuError::Shape {
            op: "rope",
            detail: format!(
                "x {:?} holds fewer than tokens · heads · head_dim = {tokens} · {heads} · {head_dim} values",
                x.shape
            ),
        });
    }
    if theta.is_nan() || theta <= 0.0 {
        return Err(GpuError::Shape { op: "rope", detail: format!("theta must be positive, got {theta}") });
    }
    if head_dim > MAX_HEAD_DIM {
        return Err(GpuError::Shape {
            op: "rope",
            detail: format!("head_dim {head_dim} is beyond the supported {MAX_HEAD_DIM}"),
        });
    }
    check_u32("rope", "x's length", need)?;
    check_u32("rope", "the last position", pos0 + tokens)?;
    let half = head_dim / 2;
    let n = tokens * heads * half;
    if n == 0 {
        return Ok(());
    }
    let mut freqs = [[0.0f32; 4]; 128];
    for (i, f) in inv_freq(head_dim, theta).into_iter().enumerate() {
        freqs[i / 4][i % 4] = f;
    }
    let params = Params {
        n: n as u32,
        half: half as u32,
        head_dim: head_dim as u32,
        heads: heads as u32,
        pos0: pos0 as u32,
        _pad: [0; 3],
        inv_freq: freqs,
    };
    let pipeline = ctx.pipeline("rope", SOURCE, "main", &[]);
    let uniform = ctx.uniform(&params);
    let bind = ctx.bind(&pipeline, &[&x.buffer, &uniform]);
    let (gx, gy) = grid_1d(n, ctx.limits().max_compute_workgroups_per_dimension);
    ctx.dispatch(encoder, &pipeline, &bind, (gx, gy, 1));
    Ok(())
}
