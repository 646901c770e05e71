//! Launcher for `shaders/dropout.wgsl`: out = beta·out + mask(seed) ⊙ x / (1 − p).
//! CPU reference: `reference::dropout`.

use super::{grid_1d, GpuContext, GpuError, GpuTensor, Recorder};
use crate::reference::dropout::threshold;

const SOURCE: &str = include_str!("../../shaders/dropout.wgsl");

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
    super::check_u32("dropout", "the element count", n)?;
    if n == 0 {
        return Ok(());
    }
    let pipeline = ctx.pipeline("dropout", SOURCE, "main", &[]);
    let params = Params { n: n as u32, seed, threshold: threshold(p), scale: 1.0 / (1.0 - p), beta };
    let uniform = ctx.uniform(&params);
    let bind = ctx.bind(&pipeline, &[&x.buffer, &out.buffer, &uniform]);
    let (gx, gy) = grid_1d(n, ctx.limits().max_compute_workgroups_per_dimension);
    encoder.dispatch(&pipeline, &bind, (gx, gy, 1));
    Ok(())
}
