//! Launcher for `shaders/silu_mul.wgsl`: out = silu(gate) · up element-wise (SwiGLU).
//! CPU reference: `reference::silu_mul`.

use super::{check_u32, grid_1d, GpuContext, GpuError, GpuTensor};

const SOURCE: &str = include_str!("../../shaders/silu_mul.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
}

pub fn encode(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
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
    ctx.dispatch(encoder, &pipeline, &bind, (gx, gy, 1));
    Ok(())
}
