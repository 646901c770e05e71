// gelu_backward: dx[i] = dy[i] · gelu'(x[i])  for i < n, the derivative of GPT-2's tanh approximation:
//   u = √(2/π)·(x + 0.044715·x³),  t = tanh u
//   gelu'(x) = ½·(1 + t) + ½·x·(1 − t)(1 + t)·√(2/π)·(1 + 3·0.044715·x²)
// (1 − t)(1 + t) rather than 1 − t² keeps the precision of 1 − t near t = ±1. u is clamped to ±15 as
// in the forward (tanh(15) is 1 in f32, so the clamp changes nothing but avoids inf/inf = NaN in
// tanh implementations built from exponentials).
// Layout: x, dy, dx [n] f32. Dispatch: WORKGROUP threads per workgroup over a 2-D grid (x ≤ the
// per-dimension limit, spilling into y); the flat index is flat_index (prelude_1d.wgsl).

struct Params { n: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i < p.n) {
        let v = x[i];
        let t = tanh(clamp(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v), -15.0, 15.0));
        let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v);
        dx[i] = dy[i] * (0.5 * (1.0 + t) + 0.5 * v * ((1.0 - t) * (1.0 + t)) * du);
    }
}
