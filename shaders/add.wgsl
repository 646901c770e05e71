// add: c[i] = a[i] + b[i] for i < n   (f32; residual connections, gradient accumulation)
//
// Layout: three flat arrays of n floats. Dispatch: WORKGROUP threads per workgroup over a 2-D grid
// (x ≤ the per-dimension limit, spilling into y); the flat index is flat_index (prelude_1d.wgsl).

struct Params { n: u32 }

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i < p.n) {
        c[i] = a[i] + b[i];
    }
}
