//! Launcher for `shaders/dropout.wgsl`: out = beta·out + mask(seed) ⊙ x / (1 − p).
//! CPU reference: `reference::dropout`.

use super::{kernel_1d, launch_1d, GpuContext, GpuError, GpuTensor, Kernel1d, Recorder};
use crate::reference::dropout::threshold;

const KERNEL: Kernel1d = kernel_1d!("dropout");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    seed: u32,
    threshold: u32,
    scale: f32,
    beta: f32,
}

/// Record dropout of the first `n` values of `x` into `out` (both at least `n` long); `beta` 0
/// overwrites, 1 accumulates. `p` must be in [0, 1).
#[allow(clippy::too_many_arguments)]
pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    x: &GpuTensor,
    out: &GpuTensor,
    n: usize,
    p: f32,
    seed: u32,
    beta: f32,
) -> Result<(), GpuError> {
    if x.len() < n || out.len() < n || !(0.0..1.0).contains(&p) {
        return Err(GpuError::Shape {
            op: "dropout",
            detail: format!("{n} values with p = {p} from x {:?} into out {:?}", x.shape, out.shape),
        });
    }
    let params = |n| Params { n, seed, threshold: threshold(p), scale: 1.0 / (1.0 - p), beta };
    launch_1d(ctx, encoder, "dropout", &KERNEL, n, &[&x.buffer, &out.buffer], params)
}
