// silu_mul: out[i] = silu(gate[i]) · up[i],  silu(g) = g / (1 + e^−g)   for i < n   (SwiGLU)
//
// e^−g overflows for g < −88: negative g uses the equal form g·e^g / (1 + e^g), whose exponential
// only underflows (to 0), so no inf or NaN can appear for any finite g.
// Layout: gate, up, out [n] f32. Dispatch: WORKGROUP threads per workgroup over a 2-D grid (x ≤ the
// per-dimension limit, spilling into y); the flat index is flat_index (prelude_1d.wgsl).

struct Params { n: u32 }

@group(0) @binding(0) var<storage, read> gate: array<f32>;
@group(0) @binding(1) var<storage, read> up: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

fn silu(g: f32) -> f32 {
    if (g >= 0.0) {
        return g / (1.0 + exp(-g));
    }
    let e = exp(g);
    return g * e / (1.0 + e);
}

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i < p.n) {
        out[i] = silu(gate[i]) * up[i];
    }
}
