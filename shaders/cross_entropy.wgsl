// cross_entropy: per row r of logits [rows, vocab] with target ids [rows]:
//   losses[r] = logsumexp(logits[r]) − logits[r, targets[r]]
//             = max + ln Σ_j e^(logits[r, j] − max) − logits[r, targets[r]]   (natural log)
// A target ≥ vocab (the caller validates ids first) never reads out of bounds: its loss is 0.
// Layout: logits [rows, vocab] f32, targets [rows] u32, losses [rows] f32.
// Dispatch: one workgroup of 256 threads per row (threads stride over the vocabulary; max then sum
// reductions); the grid is 2-D (x ≤ the per-dimension limit, spilling into y) and the row index is
// rebuilt from num_workgroups.

struct Params { rows: u32, vocab: u32 }

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<u32>;
@group(0) @binding(2) var<storage, read_write> losses: array<f32>;
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

    if (t == 0u) {
        let target_id = targets[row];
        if (target_id < p.vocab) {
            losses[row] = row_max + log(total) - logits[base + target_id];
        } else {
            losses[row] = 0.0;
        }
    }
}
