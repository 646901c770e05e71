// attention: causal multi-head attention with grouped-query heads, fused (scores, softmax, P·V) with
// an online softmax over tiles of WG keys, so no [T, S] matrix is ever stored (flash-style).
//   q [T, Hq·Dh] for T new tokens at positions past..past+T;
//   k, v [≥ S, Hkv·Dh], S = past + T (the KV cache then the new tokens; rows beyond S are ignored);
//   query head h reads key/value head h / (Hq / Hkv); query t sees keys s ≤ past + t.
//   x[h, t, s] = q[t, h]·k[s, h']ᵀ · scale  (scale = 1/√Dh), s ≤ past + t
//   lse[h, t]  = log Σ_s exp(x[h, t, s])                (kept for the backward, which recomputes P)
//   out[t, h·Dh + d] = Σ_s exp(x[h, t, s] − lse[h, t]) · v[s, h'·Dh + d]
// Online softmax, tile by tile (keys s0 .. s0+255): m' = max(m, max_tile x), α = exp(m − m'),
// l' = α·l + Σ_tile exp(x − m'), acc' = α·acc + Σ_tile exp(x − m')·v; at the end out = acc / l and
// lse = m + log l.
// Layout: f32 row-major; out [T, Hq·Dh]; lse [Hq, T].
// Dispatch: one workgroup of WG threads per (t, h), row index t·Hq + h, over a 2-D grid (x ≤ the
// per-dimension limit, spilling into y); WG ≥ Dh is the override of shaders/workgroup_reduce.wgsl
// (256; fewer on a CPU, see gpu::row_workgroup). Per tile each thread scores one key (its exponential goes to
// workgroup memory), workgroup max and sum reductions update m and l, then teams of Dh threads
// (WG / Dh teams; Dh ≤ WG) each accumulate p·v over every team-th key of the tile; the teams'
// partial rows are summed at the end.

struct Params {
    tokens: u32,
    past: u32,
    q_heads: u32,
    kv_heads: u32,
    head_dim: u32,
    group: u32,   // q_heads / kv_heads
    _pad: u32,
    scale: f32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

// WG (threads per workgroup, ≥ Dh): the override declared in shaders/workgroup_reduce.wgsl.
const NEG_MAX: f32 = -0x1.fffffep+127f;  // -FLT_MAX (Chrome's Tint rejects decimal spellings that round past it)

var<workgroup> q_row: array<f32, 256>;
var<workgroup> p_tile: array<f32, 256>;

// workgroup_sum / workgroup_max / workgroup_sum2 and `scratch`: shaders/workgroup_reduce.wgsl.

@compute @workgroup_size(WG)
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

    if (tid < dh) {
        q_row[tid] = q[q_base + tid];
    }
    workgroupBarrier();

    let teams = WG / dh;
    let team = tid / dh;
    let d = tid - team * dh;
    var m = NEG_MAX;                             // the same in every thread (reductions broadcast)
    var l = 0.0;
    var acc = 0.0;                               // this thread's team's partial out[t, h·Dh + d]
    for (var s0 = 0u; s0 < visible; s0 += WG) {
        let s = s0 + tid;
        var x = NEG_MAX;
        if (s < visible) {
            let k_base = s * kv_stride + kv_off;
            var dot = 0.0;
            for (var i = 0u; i < dh; i++) {
                dot = fma(q_row[i], k[k_base + i], dot);
            }
            x = dot * p.scale;
        }
        let m_new = max(m, workgroup_max(tid, x));
        var e = 0.0;
        if (s < visible) {
            e = exp(x - m_new);
        }
        p_tile[tid] = e;
        // workgroup_sum's barriers also publish p_tile to every thread.
        let alpha = exp(m - m_new);              // 0 on the first tile (m = -FLT_MAX)
        l = l * alpha + workgroup_sum(tid, e);
        m = m_new;
        acc *= alpha;
        if (team < teams) {
            let n = min(WG, visible - s0);
            for (var j = team; j < n; j += teams) {
                acc = fma(p_tile[j], v[(s0 + j) * kv_stride + kv_off + d], acc);
            }
        }
        workgroupBarrier(); // everyone has read p_tile before the next tile overwrites it
    }
    scratch[tid] = acc;
    workgroupBarrier();
    if (tid < dh) {
        var o = 0.0;
        for (var g = 0u; g < teams; g++) {
            o += scratch[g * dh + tid];
        }
        out[q_base + tid] = o / l;
    }
    if (tid == 0u) {
        lse[h * p.tokens + t] = m + log(l);
    }
}
