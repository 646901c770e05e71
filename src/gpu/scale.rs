//! Launcher for `shaders/scale.wgsl`: c = s · a, element-wise. CPU reference: `reference::scale`.

use super::{grid_1d, GpuContext, GpuError, GpuTensor, Recorder};

const SOURCE: &str = include_str!("../../shaders/scale.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    s: f32,
}

pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    s: f32,
    a: &GpuTensor,
    c: &GpuTensor,
) -> Result<(), GpuError> {
    let n = a.len();
    if c.len() != n {
        return Err(GpuError::Shape {
            op: "scale",
            detail: format!("a {:?} and c {:?} must hold as many values", a.shape, c.shape),
        });
    }
    if n == 0 {
        return Ok(());
    }
    let pipeline = ctx.pipeline("scale", SOURCE, "main", &[]);
    let uniform = ctx.uniform(&Params { n: n as u32, s });
    let bind = ctx.bind(&pipeline, &[&a.buffer, &c.buffer, &uniform]);
    let (x, y) = grid_1d(n, ctx.limits().max_compute_workgroups_per_dimension);
    encoder.dispatch(&pipeline, &bind, (x, y, 1));
    Ok(())
}
