//! Launcher for `shaders/gelu.wgsl`: out = gelu(x) element-wise (tanh approximation).
//! CPU reference: `reference::gelu`.

use super::{check_u32, grid_1d, GpuContext, GpuError, GpuTensor, Recorder};

const SOURCE: &str = include_str!("../../shaders/gelu.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
}

pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    x: &GpuTensor,
    out: &GpuTensor,
) -> Result<(), GpuError> {
    let n = x.len();
    if out.len() != n {
        return Err(GpuError::Shape {
            op: "gelu",
            detail: format!("x {:?} and out {:?} must hold as many values", x.shape, out.shape),
        });
    }
    let n = check_u32("gelu", "x's length", n)?;
    if n == 0 {
        return Ok(());
    }
    let pipeline = ctx.pipeline("gelu", SOURCE, "main", &[]);
    let uniform = ctx.uniform(&Params { n });
    let bind = ctx.bind(&pipeline, &[&x.buffer, &out.buffer, &uniform]);
    let (gx, gy) = grid_1d(n as usize, ctx.limits().max_compute_workgroups_per_dimension);
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}

const BACKWARD_SOURCE: &str = include_str!("../../shaders/gelu_backward.wgsl");

/// Record `dx = dy · gelu'(x)` element-wise: `shaders/gelu_backward.wgsl`, reference
/// `reference::gelu::gelu_backward`. x, dy and dx hold the same number of values.
pub fn encode_backward(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    x: &GpuTensor,
    dy: &GpuTensor,
    dx: &GpuTensor,
) -> Result<(), GpuError> {
    let n = x.len();
    if dy.len() != n || dx.len() != n {
        return Err(GpuError::Shape {
            op: "gelu_backward",
            detail: format!(
                "x {:?}, dy {:?} and dx {:?} must hold as many values",
                x.shape, dy.shape, dx.shape
            ),
        });
    }
    let n = check_u32("gelu_backward", "x's length", n)?;
    if n == 0 {
        return Ok(());
    }
    let pipeline = ctx.pipeline("gelu_backward", BACKWARD_SOURCE, "main", &[]);
    let uniform = ctx.uniform(&Params { n });
    let bind = ctx.bind(&pipeline, &[&x.buffer, &dy.buffer, &dx.buffer, &uniform]);
    let (gx, gy) = grid_1d(n as usize, ctx.limits().max_compute_workgroups_per_dimension);
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}
