//! Launcher for `shaders/scale.wgsl`: c = s · a, element-wise. CPU reference: `reference::scale`.

use super::{check_same_len, kernel_1d, launch_1d, GpuContext, GpuError, GpuTensor, Kernel1d, Recorder};

const KERNEL: Kernel1d = kernel_1d!("scale");

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
    let n = check_same_len("scale", &[("a", a), ("c", c)])?;
    launch_1d(ctx, encoder, "scale", &KERNEL, n, &[&a.buffer, &c.buffer], |n| Params { n, s })
}
