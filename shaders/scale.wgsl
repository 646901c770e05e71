// scale: c[i] = s * a[i] for i < n   (f32; LoRA's α/r, gradient clipping, loss scaling)
//
// Layout: two flat arrays of n floats. Dispatch: 256 threads per workgroup over a 2-D grid
// (x ≤ the per-dimension limit, spilling into y); the flat index is rebuilt from num_workgroups.

struct Params { n: u32, s: f32 }

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> c: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.y * groups.x * 256u + gid.x;
    if (i < p.n) {
        c[i] = p.s * a[i];
    }
}
