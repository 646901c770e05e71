// attention: causal multi-head attention with grouped-query heads, fused (scores, softmax, P·V).
//   q [T, Hq·Dh] for T new tokens at positions past..past+T;
//   k, v [≥ S, Hkv·Dh], S = past + T (the KV cache then the new tokens; rows beyond S are ignored);
//   query head h reads key/value head h / (Hq / Hkv); query t sees keys s ≤ past + t.
//   P[h, t, s] = softmax_s(q[t, h]·k[s, h']ᵀ · scale)  (scale = 1/√Dh), 0 for s > past + t;
//   out[t, h·Dh + d] = Σ_s P[h, t, s] · v[s, h'·Dh + d]
// Layout: probs [Hq, T, S] f32 row-major receives P (kept for the backward pass); it also holds the
// raw scores and exponentials while one row is being computed. out [T, Hq·Dh].
// Dispatch: one workgroup of 256 threads per (t, h), row index t·Hq + h, over a 2-D grid (x ≤ the
// per-dimension limit, spilling into y). Threads stride over the visible keys for the scores (any S),
// a workgroup max and sum reduction normalise them, then teams of Dh threads (256 / Dh teams; Dh ≤ 256)
// each accumulate P·v over every team-th key and the teams' partial rows are summed.

struct Params {
    tokens: u32,
    past: u32,
    q_heads: u32,
    kv_heads: u32,
    head_dim: u32,
    group: u32,   // q_heads / kv_heads
    seq: u32,     // S = past + tokens, the row length of probs
    scale: f32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> probs: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

const WG: u32 = 256u;
const NEG_MAX: f32 = -0x1.fffffep+127f;  // -FLT_MAX (Chrome's Tint rejects decimal spellings that round past it)

var<workgroup> q_row: array<f32, 256>;

// workgroup_sum / workgroup_max / workgroup_sum2 and `scratch`: shaders/workgroup_reduce.wgsl.

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let row = wid.y * groups.x + wid.x;
    if (row >= p.tokens * p.q_heads) {
        return; // uniform per workgroup
    }
    let t = row / p.q_heads;
    let h = row - t * p.q_heads;
    let tid = lid.x;
    let dh = p.head_dim;
    let visible = p.past + t + 1u;
    let q_base = row * dh;                       // q[t, h·Dh], also out's
    let kv_stride = p.kv_heads * dh;
    let kv_off = (h / p.group) * dh;
    let p_base = (h * p.tokens + t) * p.seq;

    if (tid < dh) {
        q_row[tid] = q[q_base + tid];
    }
    workgroupBarrier();

    // Scores of the visible keys, one key per thread at a time.
    var m = NEG_MAX;
    for (var s = tid; s < visible; s += WG) {
        let k_base = s * kv_stride + kv_off;
        var dot = 0.0;
        for (var d = 0u; d < dh; d++) {
            dot = fma(q_row[d], k[k_base + d], dot);
        }
        let score = dot * p.scale;
        probs[p_base + s] = score;
        m = max(m, score);
    }
    let row_max = workgroup_max(tid, m);

    // Each thread revisits only the entries it wrote itself: no barrier needed between the loops.
    var sum = 0.0;
    for (var s = tid; s < visible; s += WG) {
        let e = exp(probs[p_base + s] - row_max);
        probs[p_base + s] = e;
        sum += e;
    }
    let total = workgroup_sum(tid, sum);
    for (var s = tid; s < p.seq; s += WG) {
        if (s < visible) {
            probs[p_base + s] = probs[p_base + s] / total;
        } else {
            probs[p_base + s] = 0.0;
        }
    }
    // P·V reads entries other threads wrote.
    storageBarrier();

    let teams = WG / dh;
    let team = tid / dh;
    let d = tid - team * dh;
    var acc = 0.0;
    if (team < teams) {
        let v_col = kv_off + d;
        for (var s = team; s < visible; s += teams) {
            acc = fma(probs[p_base + s], v[s * kv_stride + v_col], acc);
        }
    }
    scratch[tid] = acc;
    workgroupBarrier();
    if (tid < dh) {
        var o = 0.0;
        for (var g = 0u; g < teams; g++) {
            o += scratch[g * dh + tid];
        }
        out[q_base + tid] = o;
    }
}
