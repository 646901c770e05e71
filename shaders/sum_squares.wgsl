// sum_squares: out[0] = Σ_i x[i]²   (f32; the global gradient norm for clipping)
//
// Two passes, both with 256 threads per workgroup:
//   partial: G workgroups (1-D, G ≤ 1024); thread t of group g strides over x from g·256 + t in steps
//            of G·256, then the group tree-reduces in workgroup memory into partials[g].
//   finish:  one workgroup strides over the G partials and tree-reduces them into out[0].
// Layout: x [n], partials [G], out [1].

struct Params { n: u32, groups: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

// workgroup_sum and `scratch`: shaders/workgroup_reduce.wgsl.

@compute @workgroup_size(256)
fn partial(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    var s = 0.0;
    for (var i = wid.x * 256u + lid.x; i < p.n; i += p.groups * 256u) {
        let v = x[i];
        s = fma(v, v, s);
    }
    let total = workgroup_sum(lid.x, s);
    if (lid.x == 0u) {
        out[wid.x] = total;
    }
}

// Here x holds the partials (n = G) and out is the final one-element result.
@compute @workgroup_size(256)
fn finish(@builtin(local_invocation_id) lid: vec3<u32>) {
    var s = 0.0;
    for (var i = lid.x; i < p.n; i += 256u) {
        s += x[i];
    }
    let total = workgroup_sum(lid.x, s);
    if (lid.x == 0u) {
        out[0] = total;
    }
}
