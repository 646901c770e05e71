//! Launcher for `shaders/gelu.wgsl`: out = gelu(x) element-wise (tanh approximation), and its
//! backward `shaders/gelu_backward.wgsl`. CPU reference: `reference::gelu`.

use super::{check_same_len, kernel_1d, launch_1d, GpuContext, GpuError, GpuTensor, Kernel1d, Recorder};

const KERNEL: Kernel1d = kernel_1d!("gelu");
const BACKWARD: Kernel1d = kernel_1d!("gelu_backward");

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
    let n = check_same_len("gelu", &[("x", x), ("out", out)])?;
    launch_1d(ctx, encoder, "gelu", &KERNEL, n, &[&x.buffer, &out.buffer], |n| Params { n })
}

/// Record `dx = dy · gelu'(x)` element-wise: `shaders/gelu_backward.wgsl`, reference
/// `reference::gelu::gelu_backward`. x, dy and dx hold the same number of values.
pub fn encode_backward(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    x: &GpuTensor,
    dy: &GpuTensor,
    dx: &GpuTensor,
) -> Result<(), GpuError> {
    const OP: &str = "gelu_backward";
    let n = check_same_len(OP, &[("x", x), ("dy", dy), ("dx", dx)])?;
    launch_1d(ctx, encoder, OP, &BACKWARD, n, &[&x.buffer, &dy.buffer, &dx.buffer], |n| Params { n })
}
