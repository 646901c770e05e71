//! Launcher for `shaders/matmul.wgsl`: tiled f32 matmul in the three training layouts, batched,
//! with optional bias, scale and accumulation. CPU reference: `reference::matmul`.

use super::{GpuContext, GpuError, GpuTensor, Recorder};
use crate::ops::Matmul;

const SOURCE: &str = include_str!("../../shaders/matmul.wgsl");
const TILE: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    has_bias: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    alpha: f32,
    beta: f32,
    ldc: u32,
    c_offset: u32,
    bias_offset: u32,
    lda: u32,
    a_offset: u32,
}

fn check(what: &str, t: &GpuTensor, need: usize) -> Result<(), GpuError> {
    if t.len() < need {
        return Err(GpuError::Shape {
            op: "matmul",
            detail: format!("{what} has {} values (shape {:?}), needs {need}", t.len(), t.shape),
        });
    }
    Ok(())
}

/// Record `c = alpha · op(a)·op(b) + beta · c (+ bias)` into `encoder`.
pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    spec: &Matmul,
    a: &GpuTensor,
    b: &GpuTensor,
    bias: Option<&GpuTensor>,
    c: &GpuTensor,
) -> Result<(), GpuError> {
    check("A", a, spec.a_len())?;
    check("B", b, spec.b_len())?;
    check("C", c, spec.c_len())?;
    if let Some(bias) = bias {
        check("bias", bias, spec.bias_offset + spec.n)?;
    }
    if spec.c_len() == 0 {
        return Ok(());
    }
    let max = ctx.limits().max_compute_workgroups_per_dimension as usize;
    let groups = (spec.n.div_ceil(TILE), spec.m.div_ceil(TILE), spec.batch);
    if groups.0 > max || groups.1 > max || groups.2 > max {
        return Err(GpuError::Shape {
            op: "matmul",
            detail: format!("{spec:?} needs a workgroup grid {groups:?}, over this GPU's {max} per dimension"),
        });
    }
    let params = Params {
        m: spec.m as u32,
        n: spec.n as u32,
        k: spec.k as u32,
        trans_a: spec.layout.trans_a() as u32,
        trans_b: spec.layout.trans_b() as u32,
        has_bias: bias.is_some() as u32,
        stride_a: (spec.m * spec.lda) as u32,
        stride_b: if spec.shared_b { 0 } else { (spec.k * spec.n) as u32 },
        stride_c: (spec.m * spec.ldc) as u32,
        alpha: spec.alpha,
        beta: spec.beta,
        ldc: spec.ldc as u32,
        c_offset: spec.c_offset as u32,
        bias_offset: spec.bias_offset as u32,
        lda: spec.lda as u32,
        a_offset: spec.a_offset as u32,
    };
    let pipeline = ctx.pipeline("matmul", SOURCE, "main", &[]);
    let uniform = ctx.uniform(&params);
    // Without a bias the shader never reads binding 2, but WebGPU wants something bound: reuse A.
    let bias = bias.unwrap_or(a);
    let bind = ctx.bind(&pipeline, &[&a.buffer, &b.buffer, &bias.buffer, &c.buffer, &uniform]);
    encoder.dispatch(&pipeline, &bind, (groups.0 as u32, groups.1 as u32, groups.2 as u32));
    Ok(())
}
