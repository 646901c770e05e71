//! Launcher for `shaders/adamw.wgsl`: one AdamW step in place (torch.optim.AdamW's semantics).
//! CPU reference: `reference::adamw`, which also defines the hyper-parameters ([`AdamW`]) and the
//! per-step scalars both sides use.

use super::{check_same_len, kernel_1d, launch_1d, GpuContext, GpuError, GpuTensor, Kernel1d, Recorder};
pub use crate::reference::adamw::AdamW;

const KERNEL: Kernel1d = kernel_1d!("adamw");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    decay: f32,
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    grad_scale: f32,
    _pad: [u32; 2],
}

/// Record step `step` (counting from 1) of AdamW on `param` with gradient `grad · grad_scale`,
/// updating the first and second moments `m` and `v` in place (zeros before the first step).
/// `grad_scale` folds gradient clipping (max_norm / norm) and accumulation averaging (1 / steps) into
/// the update. All four tensors hold the same number of values.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    param: &GpuTensor,
    grad: &GpuTensor,
    m: &GpuTensor,
    v: &GpuTensor,
    opt: &AdamW,
    step: u32,
    grad_scale: f32,
) -> Result<(), GpuError> {
    const OP: &str = "adamw";
    let n = check_same_len(OP, &[("param", param), ("grad", grad), ("m", m), ("v", v)])?;
    if step == 0 {
        return Err(GpuError::Shape { op: OP, detail: "steps count from 1, got step 0".into() });
    }
    let s = opt.scalars(step);
    let params = |n| Params {
        n,
        decay: s.decay,
        beta1: s.beta1,
        beta2: s.beta2,
        one_minus_beta1: s.one_minus_beta1,
        one_minus_beta2: s.one_minus_beta2,
        step_size: s.step_size,
        bc2_sqrt: s.bias_correction2_sqrt,
        eps: s.eps,
        grad_scale,
        _pad: [0; 2],
    };
    launch_1d(ctx, encoder, OP, &KERNEL, n, &[&param.buffer, &grad.buffer, &m.buffer, &v.buffer], params)
}
