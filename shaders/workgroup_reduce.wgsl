
// ---- workgroup_reduce.wgsl: appended by the launchers of the row-wise kernels (norms, softmax,
// cross-entropy, attention, sum of squares), so the reductions are written once. Not an op of its
// own: it has no entry point. The kernel that uses it runs 256 threads per workgroup and passes
// t = local_invocation_id.x.
//   workgroup_sum(t, v)  = Σ of v over the workgroup's 256 threads   (tree, 8 halving steps)
//   workgroup_max(t, v)  = max of v over the same threads
//   workgroup_sum2(t, v) = the vec2 sum: two sums for one set of barriers
// 256 is written out (scratch sizes, the first width 128) rather than taken from an override like
// prelude_1d.wgsl's WORKGROUP; it equals gpu::WORKGROUP_1D (see the note there).
// Every thread must call them (they hold barriers); all get the result. A kernel may also use
// `scratch` itself between calls (attention gathers its per-group partial rows there).

var<workgroup> scratch: array<f32, 256>;
var<workgroup> scratch2: array<vec2<f32>, 256>;

fn workgroup_sum(t: u32, v: f32) -> f32 {
    scratch[t] = v;
    for (var width = 128u; width > 0u; width = width / 2u) {
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
    for (var width = 128u; width > 0u; width = width / 2u) {
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
    for (var width = 128u; width > 0u; width = width / 2u) {
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
