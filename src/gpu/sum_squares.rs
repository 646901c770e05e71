//! Launcher for `shaders/sum_squares.wgsl`: out[0] = Σ x². CPU reference: `reference::sum_squares`.

use super::{check_u32, GpuContext, GpuError, GpuTensor, Recorder, WORKGROUP_1D};

const SOURCE: &str = concat!(include_str!("../../shaders/sum_squares.wgsl"), include_str!("../../shaders/workgroup_reduce.wgsl"));
/// At most this many partial sums: enough workgroups to fill a large GPU, few enough for one
/// workgroup to finish them.
const MAX_GROUPS: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    groups: u32,
}

/// Number of partial sums (the workspace length) for `n` inputs.
pub fn workspace_len(n: usize) -> usize {
    n.div_ceil(WORKGROUP_1D as usize).clamp(1, MAX_GROUPS)
}

/// Record `out[0] = Σ x²`, using `partials` (at least `workspace_len(x.len())` values) as scratch.
pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    x: &GpuTensor,
    partials: &GpuTensor,
    out: &GpuTensor,
) -> Result<(), GpuError> {
    let groups = workspace_len(x.len());
    if partials.len() < groups || out.is_empty() {
        return Err(GpuError::Shape {
            op: "sum_squares",
            detail: format!(
                "needs {groups} partials and one output, got {:?} and {:?}",
                partials.shape, out.shape
            ),
        });
    }
    let n = check_u32("sum_squares", "x's length", x.len())?;
    // Pass 1: each workgroup reduces a strided share of x into partials[g].
    let partial = ctx.pipeline("sum_squares", SOURCE, "partial", &[]);
    let p1 = ctx.uniform(&Params { n, groups: groups as u32 });
    let bind1 = ctx.bind(&partial, &[&x.buffer, &partials.buffer, &p1]);
    encoder.dispatch(&partial, &bind1, (groups as u32, 1, 1));
    // Pass 2: one workgroup adds the partials (a separate pass orders it after pass 1).
    let finish = ctx.pipeline("sum_squares", SOURCE, "finish", &[]);
    let p2 = ctx.uniform(&Params { n: groups as u32, groups: 1 });
    let bind2 = ctx.bind(&finish, &[&partials.buffer, &out.buffer, &p2]);
    encoder.dispatch(&finish, &bind2, (1, 1, 1));
    Ok(())
}
