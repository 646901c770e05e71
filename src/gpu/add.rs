//! Launcher for `shaders/add.wgsl`: c = a + b, element-wise. CPU reference: `reference::add`.

use super::{check_same_len, kernel_1d, launch_1d, GpuContext, GpuError, GpuTensor, Kernel1d, Recorder};

const KERNEL: Kernel1d = kernel_1d!("add");

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
    let n = check_same_len("add", &[("a", a), ("b", b), ("c", c)])?;
    launch_1d(ctx, encoder, "add", &KERNEL, n, &[&a.buffer, &b.buffer, &c.buffer], |n| Params { n })
}
