//! Launcher for `shaders/silu_mul.wgsl`: out = silu(gate) · up element-wise (SwiGLU), and its
//! backward `shaders/silu_mul_backward.wgsl`. CPU reference: `reference::silu_mul`.

use super::{check_same_len, kernel_1d, launch_1d, GpuContext, GpuError, GpuTensor, Kernel1d, Recorder};

const KERNEL: Kernel1d = kernel_1d!("silu_mul");
const BACKWARD: Kernel1d = kernel_1d!("silu_mul_backward");

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
    let n = check_same_len("silu_mul", &[("gate", gate), ("up", up), ("out", out)])?;
    launch_1d(ctx, encoder, "silu_mul", &KERNEL, n, &[&gate.buffer, &up.buffer, &out.buffer], |n| Params { n })
}

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
    const OP: &str = "silu_mul_backward";
    let n = check_same_len(OP, &[("gate", gate), ("up", up), ("dout", dout), ("dgate", dgate), ("dup", dup)])?;
    let buffers = [&gate.buffer, &up.buffer, &dout.buffer, &dgate.buffer, &dup.buffer];
    launch_1d(ctx, encoder, OP, &BACKWARD, n, &buffers, |n| Params { n })
}
