//! Launcher for `shaders/silu_mul.wgsl`: out = silu(gate) · up element-wise (SwiGLU).
//! CPU reference: `reference::silu_mul`.

use super::{check_u32, grid_1d, GpuContext, GpuError, GpuTensor, Recorder};

const SOURCE: &str = include_str!("../../shaders/silu_mul.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
}

pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    gate: &GpuTensor,
    up: &GpuTensor,
    out: &GpuTensor,
) -> Result<(), GpuError> {
    let n = gate.len();
    if up.len() != n || out.len() != n {
        return Err(GpuError::Shape {
            op: "silu_mul",
            detail: format!(
                "gate {:?}, up {:?} and out {:?} must hold as many values",
                gate.shape, up.shape, out.shape
            ),
        });
    }
    let n = check_u32("silu_mul", "gate's length", n)?;
    if n == 0 {
        return Ok(());
    }
    let pipeline = ctx.pipeline("silu_mul", SOURCE, "main", &[]);
    let uniform = ctx.uniform(&Params { n });
    let bind = ctx.bind(&pipeline, &[&gate.buffer, &up.buffer, &out.buffer, &uniform]);
    let (gx, gy) = grid_1d(n as usize, ctx.limits().max_compute_workgroups_per_dimension);
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}

const BACKWARD_SOURCE: &str = include_str!("../../shaders/silu_mul_backward.wgsl");

/// Record the gradients of `out = silu(gate) · up` given `dout`: `dgate = dout · up · silu'(gate)`,
/// `dup = dout · silu(gate)` (`shaders/silu_mul_backward.wgsl`, reference
/// `reference::silu_mul::silu_mul_backward`). All five tensors hold the same number of values.
#[allow(clippy::too_many_arguments)]
pub fn encode_backward(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    gate: &GpuTensor,
    up: &GpuTensor,
    dout: &GpuTensor,
    dgate: &GpuTensor,
    dup: &GpuTensor,
) -> Result<(), GpuError> {
    let n = gate.len();
    if up.len() != n || dout.len() != n || dgate.len() != n || dup.len() != n {
        return Err(GpuError::Shape {
            op: "silu_mul_backward",
            detail: format!(
                "gate {:?}, up {:?}, dout {:?}, dgate {:?} and dup {:?} must hold as many values",
                gate.shape, up.shape, dout.shape, dgate.shape, dup.shape
            ),
        });
    }
    let n = check_u32("silu_mul_backward", "gate's length", n)?;
    if n == 0 {
        return Ok(());
    }
    let pipeline = ctx.pipeline("silu_mul_backward", BACKWARD_SOURCE, "main", &[]);
    let uniform = ctx.uniform(&Params { n });
    let bind = ctx.bind(
        &pipeline,
        &[&gate.buffer, &up.buffer, &dout.buffer, &dgate.buffer, &dup.buffer, &uniform],
    );
    let (gx, gy) = grid_1d(n as usize, ctx.limits().max_compute_workgroups_per_dimension);
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}
