// cross_entropy_backward: the gradient of scale · Σ_r loss[r] (loss as in cross_entropy.wgsl) with
// respect to the logits, per row r of logits [rows, vocab] with target ids [rows]:
//   dlogits[r, j] = scale · (softmax(logits[r])_j − [j = targets[r]])
//                 = scale · (e^(logits[r, j] − max) / Σ_j' e^(logits[r, j'] − max) − [j = targets[r]])
// A target ≥ vocab (0xFFFFFFFF marks an ignored row) gets an all-zero gradient row, matching the
// forward kernel's loss of 0 for it.
// Layout: logits, dlogits [rows, vocab] f32, targets [rows] u32.
// Dispatch: one workgroup of 256 threads per row (threads stride over the vocabulary; max then sum
// reductions, then every logit's gradient); the grid is 2-D (x ≤ the per-dimension limit, spilling
// into y) and the row index is rebuilt from num_workgroups.

struct Params { rows: u32, vocab: u32, scale: f32, _pad: u32 }

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<u32>;
@group(0) @binding(2) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const NEG_MAX: f32 = -0x1.fffffep+127f;  // -FLT_MAX (Chrome's Tint rejects decimal spellings that round past it)

// workgroup_sum / workgroup_max / workgroup_sum2 and `scratch`: shaders/workgroup_reduce.wgsl.

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let row = wid.y * groups.x + wid.x;
    if (row >= p.rows) {
        return; // uniform per workgroup
    }
    let base = row * p.vocab;
    let t = lid.x;
    let target_id = targets[row];
    if (target_id >= p.vocab) {
        // Ignored row (uniform per workgroup: every thread read the same target).
        for (var j = t; j < p.vocab; j += 256u) {
            dlogits[base + j] = 0.0;
        }
        return;
    }

    var m = NEG_MAX;
    for (var j = t; j < p.vocab; j += 256u) {
        m = max(m, logits[base + j]);
    }
    let row_max = workgroup_max(t, m);

    var s = 0.0;
    for (var j = t; j < p.vocab; j += 256u) {
        s += exp(logits[base + j] - row_max);
    }
    let total = workgroup_sum(t, s);

    for (var j = t; j < p.vocab; j += 256u) {
        var g = exp(logits[base + j] - row_max) / total;
        if (j == target_id) {
            g -= 1.0;
        }
        dlogits[base + j] = p.scale * g;
    }
}
