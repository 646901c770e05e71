// adamw: one AdamW step in place, torch.optim.AdamW's semantics (decoupled weight decay), for i < n:
//   g = grad[i] · grad_scale
//   p ← p · decay                                   decay = 1 − lr·wd
//   m ← β1·m + (1 − β1)·g
//   v ← β2·v + (1 − β2)·g²
//   p ← p − step_size · m / (√v / bc2_sqrt + eps)   step_size = lr / (1 − β1^t), bc2_sqrt = √(1 − β2^t)
// The step-dependent scalars are computed by the launcher in f64 and rounded to f32 once
// (reference::adamw::AdamW::scalars), the same values the CPU reference uses.
// All or nothing: an update is recorded as two dispatches per tensor, every tensor's check before any
// tensor's apply (src/gpu/adamw.rs). Check (apply = 0) computes the new p, m, v and writes none of
// them; if any is ±∞ or NaN (exponent bits all ones: WGSL has no isnan, and x != x may be folded
// away) it sets status[0] to 1. Apply (apply = 1) computes the same values and writes them, unless
// status[0] ≠ 0 — then nothing is written, so a learning rate that overflows leaves the adapter and
// its moments as they were. status is sticky: only the caller clears it (after reading it).
// Layout: param, grad, m, v [n] f32 (param, m, v read and written in place); status [1] u32.
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
    apply: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> status: array<atomic<u32>>;
@group(0) @binding(5) var<uniform> p: Params;

fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= p.n) {
        return;
    }
    let g = grad[i] * p.grad_scale;
    let mi = p.beta1 * m[i] + p.one_minus_beta1 * g;
    let vi = p.beta2 * v[i] + p.one_minus_beta2 * g * g;
    let denom = sqrt(vi) / p.bc2_sqrt + p.eps;
    let pi = param[i] * p.decay - p.step_size * (mi / denom);
    if (p.apply == 0u) {
        if (!(finite(pi) && finite(mi) && finite(vi))) {
            atomicOr(&status[0], 1u);
        }
        return;
    }
    if (atomicLoad(&status[0]) != 0u) {
        return;
    }
    m[i] = mi;
    v[i] = vi;
    param[i] = pi;
}
