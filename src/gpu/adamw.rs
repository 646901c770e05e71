//! Launcher for `shaders/adamw.wgsl`: one AdamW step in place (torch.optim.AdamW's semantics).
//! CPU reference: `reference::adamw`, which also defines the hyper-parameters ([`AdamW`]) and the
//! per-step scalars both sides use.

use super::{check_u32, grid_1d, GpuContext, GpuError, GpuTensor, Recorder};
pub use crate::reference::adamw::AdamW;

const SOURCE: &str = include_str!("../../shaders/adamw.wgsl");

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
    let n = param.len();
    if grad.len() != n || m.len() != n || v.len() != n {
        return Err(GpuError::Shape {
            op: OP,
            detail: format!(
                "param {:?}, grad {:?}, m {:?} and v {:?} must hold as many values",
                param.shape, grad.shape, m.shape, v.shape
            ),
        });
    }
    if step == 0 {
        return Err(GpuError::Shape { op: OP, detail: "steps count from 1, got step 0".into() });
    }
    let n = check_u32(OP, "param's length", n)?;
    if n == 0 {
        return Ok(());
    }
    let s = opt.scalars(step);
    let params = Params {
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
    let pipeline = ctx.pipeline("adamw", SOURCE, "main", &[]);
    let uniform = ctx.uniform(&params);
    let bind = ctx.bind(&pipeline, &[&param.buffer, &grad.buffer, &m.buffer, &v.buffer, &uniform]);
    let (gx, gy) = grid_1d(n as usize, ctx.limits().max_compute_workgroups_per_dimension);
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}
