// gelu: y[i] = ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))  for i < n   (GPT-2's tanh approximation)
//
// tanh's argument is clamped to ±15 first (tanh(15) is 1 in f32): some implementations compute tanh
// as a ratio of exponentials that overflows to inf/inf = NaN for large arguments.
// Layout: x, y [n] f32. Dispatch: WORKGROUP threads per workgroup over a 2-D grid (x ≤ the per-dimension
// limit, spilling into y); the flat index is flat_index (prelude_1d.wgsl).

struct Params { n: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i < p.n) {
        let v = x[i];
        let u = clamp(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v), -15.0, 15.0);
        y[i] = 0.5 * v * (1.0 + tanh(u));
    }
}
