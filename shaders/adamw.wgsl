// adamw: one AdamW step in place, torch.optim.AdamW's semantics (decoupled weight decay), for i < n:
//   g = grad[i] · grad_scale
//   p ← p · decay                                   decay = 1 − lr·wd
//   m ← β1·m + (1 − β1)·g
//   v ← β2·v + (1 − β2)·g²
//   p ← p − step_size · m / (√v / bc2_sqrt + eps)   step_size = lr / (1 − β1^t), bc2_sqrt = √(1 − β2^t)
// The step-dependent scalars are computed by the launcher in f64 and rounded to f32 once
// (reference::adamw::AdamW::scalars), the same values the CPU reference uses.
// Layout: param, grad, m, v [n] f32 (param, m, v read and written in place).
// Dispatch: WORKGROUP threads per workgroup over a 2-D grid (x ≤ the per-dimension limit, spilling into y);
// the flat index is flat_index (prelude_1d.wgsl).

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
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= p.n) {
        return;
    }
    let g = grad[i] * p.grad_scale;
    let mi = p.beta1 * m[i] + p.one_minus_beta1 * g;
    let vi = p.beta2 * v[i] + p.one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    let denom = sqrt(vi) / p.bc2_sqrt + p.eps;
    param[i] = param[i] * p.decay - p.step_size * (mi / denom);
}
