
// ---- workgroup_reduce.wgsl: appended by the launchers of the row-wise kernels (norms, softmax,
// cross-entropy, attention, sum of squares), so the reductions are written once. Not an op of its
// own: it has no entry point. The kernel that uses it runs WG threads per workgroup and passes
// t = local_invocation_id.x.
//   WG                   threads per workgroup: a power of two ≤ 256, a pipeline-overridable
//                        constant (256 unless the launcher sets it; attention sets it smaller on a
//                        CPU implementation, see gpu::row_workgroup); the scratch arrays
//                        hold 256, the most it may be
//   workgroup_sum(t, v)  = Σ of v over the workgroup's WG threads   (tree, log2(WG) halving steps)
//   workgroup_max(t, v)  = max of v over the same threads
//   workgroup_sum2(t, v) = the vec2 sum: two sums for one set of barriers
// Every thread must call them (they hold barriers); all get the result. A kernel may also use
// `scratch` itself between calls (attention gathers its per-group partial rows there).

override WG: u32 = 256u;

var<workgroup> scratch: array<f32, 256>;
var<workgroup> scratch2: array<vec2<f32>, 256>;

fn workgroup_sum(t: u32, v: f32) -> f32 {
    scratch[t] = v;
    for (var width = WG / 2u; width > 0u; width = width / 2u) {
        workgroupBarrier();
        if (t < width) {
            scratch[t] += scratch[t + width];
        }
    }
    workgroupBarrier();
    let total = scratch[0];
    workgroupBarrier(); // everyone has read it before the next call overwrites scratch
    return total;
}

fn workgroup_max(t: u32, v: f32) -> f32 {
    scratch[t] = v;
    for (var width = WG / 2u; width > 0u; width = width / 2u) {
        workgroupBarrier();
        if (t < width) {
            scratch[t] = max(scratch[t], scratch[t + width]);
        }
    }
    workgroupBarrier();
    let total = scratch[0];
    workgroupBarrier();
    return total;
}

fn workgroup_sum2(t: u32, v: vec2<f32>) -> vec2<f32> {
    scratch2[t] = v;
    for (var width = WG / 2u; width > 0u; width = width / 2u) {
        workgroupBarrier();
        if (t < width) {
            scratch2[t] += scratch2[t + width];
        }
    }
    workgroupBarrier();
    let total = scratch2[0];
    workgroupBarrier();
    return total;
}
