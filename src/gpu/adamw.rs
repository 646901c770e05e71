//! Launcher for `shaders/adamw.wgsl`: one AdamW step in place (torch.optim.AdamW's semantics),
//! all or nothing over a set of tensors.
//! CPU reference: `reference::adamw`, which also defines the hyper-parameters ([`AdamW`]) and the
//! per-step scalars both sides use.

use super::{check_len, check_same_len, kernel_1d, launch_1d, GpuContext, GpuError, GpuTensor, Kernel1d, Recorder};
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
    /// 0: check, 1: apply.
    apply: u32,
    _pad: u32,
}

/// One tensor AdamW updates in place: the parameter, its gradient, and the first and second moments
/// (zeros before the first step). All four hold the same number of values.
#[derive(Clone, Copy)]
pub struct Slot<'a> {
    pub param: &'a GpuTensor,
    pub grad: &'a GpuTensor,
    pub m: &'a GpuTensor,
    pub v: &'a GpuTensor,
}

/// Record step `step` (counting from 1) of AdamW on every slot with gradient `grad · grad_scale`,
/// all or nothing: first a check of every slot, then the writes, which happen only if no new
/// parameter or moment of any slot is ±∞ or NaN and `status` (one u32, zero before) is still 0;
/// otherwise `status` becomes 1 and nothing is written (see `shaders/adamw.wgsl`). `status` stays 1
/// until the caller clears it, and every update recorded meanwhile writes nothing either.
/// `grad_scale` folds gradient clipping (max_norm / norm) and accumulation averaging (1 / steps) into
/// the update.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    slots: &[Slot],
    status: &GpuTensor,
    opt: &AdamW,
    step: u32,
    grad_scale: f32,
) -> Result<(), GpuError> {
    const OP: &str = "adamw";
    if step == 0 {
        return Err(GpuError::Shape { op: OP, detail: "steps count from 1, got step 0".into() });
    }
    check_len(OP, "status", status, 1)?;
    let s = opt.scalars(step);
    for apply in [0, 1] {
        for t in slots {
            let n = check_same_len(OP, &[("param", t.param), ("grad", t.grad), ("m", t.m), ("v", t.v)])?;
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
                apply,
                _pad: 0,
            };
            let buffers = [&t.param.buffer, &t.grad.buffer, &t.m.buffer, &t.v.buffer, &status.buffer];
            launch_1d(ctx, encoder, OP, &KERNEL, n, &buffers, params)?;
        }
    }
    Ok(())
}
