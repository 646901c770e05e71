//! Launcher for `shaders/add.wgsl`: c = a + b, element-wise. CPU reference: `reference::add`.

use super::{grid_1d, GpuContext, GpuError, GpuTensor, Recorder};

const SOURCE: &str = include_str!("../../shaders/add.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
}

pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    a: &GpuTensor,
    b: &GpuTensor,
    c: &GpuTensor,
) -> Result<(), GpuError> {
    let n = a.len();
    if b.len() != n || c.len() != n {
        return Err(GpuError::Shape {
            op: "add",
            detail: format!("a {:?}, b {:?} and c {:?} must hold as many values", a.shape, b.shape, c.shape),
        });
    }
    if n == 0 {
        return Ok(());
    }
    let pipeline = ctx.pipeline("add", SOURCE, "main", &[]);
    let uniform = ctx.uniform(&Params { n: n as u32 });
    let bind = ctx.bind(&pipeline, &[&a.buffer, &b.buffer, &c.buffer, &uniform]);
    let (x, y) = grid_1d(n, ctx.limits().max_compute_workgroups_per_dimension);
    encoder.dispatch(&pipeline, &bind, (x, y, 1));
    Ok(())
}
