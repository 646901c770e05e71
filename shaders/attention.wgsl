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
    d_model: u32, // `decode_o`: o's outputs D
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

// ---- `decode`: the same outputs, for a CPU implementation (generation, prompts, training windows) ----
// On lavapipe and SwiftShader every invocation's load is a bounds-checked load of its own and every
// barrier switches all of a workgroup's invocations, so `main` (a workgroup per query head, ~17
// barriers per tile of keys) costs ~0.3 ms a layer for one token. Here one workgroup of WG threads
// (32, set by the launcher) serves a token t and a key/value head h' with all GROUP query heads that
// read it, so each key and value is loaded once for the group, four values a load, and the softmax
// takes 4 barriers in all:
//   1. the group's query rows → qs; 2. thread j scores keys s ≡ j (mod WG) for every head into
//   sc[g·S + s] (S = past + t + 1 visible keys), keeping its maxima; 3. m[g] = max over the threads'
//   maxima; sc ← exp(sc − m), l[g] = Σ of the threads' sums; 4. thread o = g·Dh/4 + i sums
//   P·V for four values of head g: out = Σ_s p[g, s]·v[s] / l[g]; lse = m + log l.
// Limits (the launcher checks them with the same sizes, src/gpu/attention.rs DECODE_*, else `main`
// runs): GROUP ≤ 8, GROUP·Dh ≤ 1024, Dh % 4 = 0,
// GROUP·S ≤ 2048 (sc holds every visible key's score: no online softmax needed).
// Dispatch: one workgroup per (t, h'), row index t·Hkv + h', over a 2-D grid as in `main`.

@group(0) @binding(0) var<storage, read> q4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> k4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> v4: array<vec4<f32>>;

override GROUP: u32 = 1u;         // query heads per key/value head (= p.group)
const DECODE_GROUP_MAX: u32 = 8u;

var<workgroup> qs: array<vec4<f32>, 256>;   // qs[g·Dh/4 + i]: query head h'·GROUP + g, values 4i..4i+3
var<workgroup> sc: array<f32, 2048>;        // sc[g·S + s]: scores, then exp(score − m[g])
var<workgroup> part: array<f32, 256>;       // part[g·WG + j]: thread j's maximum, then its sum
var<workgroup> os: array<vec4<f32>, 256>;   // os[g·Dh/4 + i]: the group's out rows, values 4i..4i+3

@compute @workgroup_size(WG)
fn decode(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) groups: vec3<u32>) {
    let row = wid.y * groups.x + wid.x;
    if (row >= p.tokens * p.kv_heads) {
        return; // uniform per workgroup
    }
    decode_row(lid.x, row);
}

// `decode`'s work for row t·Hkv + h': out and lse of the group's query heads, and the group's
// out rows into `os` (what `decode_o` projects).
fn decode_row(tid: u32, row: u32) {
    let t = row / p.kv_heads;
    let hk = row - t * p.kv_heads;
    let d4 = p.head_dim / 4u;
    let visible = p.past + t + 1u;
    let kv_stride = p.kv_heads * d4;
    let kv_off = hk * d4;
    let head0 = hk * GROUP;                      // the group's first query head

    for (var i = tid; i < GROUP * d4; i += WG) {
        qs[i] = q4[(t * p.q_heads + head0) * d4 + i];
    }
    workgroupBarrier();

    var m: array<f32, DECODE_GROUP_MAX>;
    for (var g = 0u; g < GROUP; g++) {
        m[g] = NEG_MAX;
    }
    for (var s = tid; s < visible; s += WG) {
        // Zeroed explicitly for each key: in Chrome on SwiftShader this `var`, declared without an
        // initializer inside the loop, kept the previous key's sums (wrong scores past 32 keys).
        var x: array<f32, DECODE_GROUP_MAX>;
        for (var g = 0u; g < GROUP; g++) {
            x[g] = 0.0;
        }
        let kb = s * kv_stride + kv_off;
        for (var i = 0u; i < d4; i++) {
            let kv = k4[kb + i];
            for (var g = 0u; g < GROUP; g++) {
                x[g] += dot(qs[g * d4 + i], kv);
            }
        }
        for (var g = 0u; g < GROUP; g++) {
            let score = x[g] * p.scale;
            sc[g * visible + s] = score;
            m[g] = max(m[g], score);
        }
    }
    for (var g = 0u; g < GROUP; g++) {
        part[g * WG + tid] = m[g];
    }
    workgroupBarrier();
    for (var g = 0u; g < GROUP; g++) {
        for (var j = 0u; j < WG; j++) {
            m[g] = max(m[g], part[g * WG + j]);
        }
    }
    workgroupBarrier(); // every thread has its maxima before part is overwritten

    var l: array<f32, DECODE_GROUP_MAX>;
    for (var s = tid; s < visible; s += WG) {
        for (var g = 0u; g < GROUP; g++) {
            let e = exp(sc[g * visible + s] - m[g]);
            sc[g * visible + s] = e;
            l[g] += e;
        }
    }
    for (var g = 0u; g < GROUP; g++) {
        part[g * WG + tid] = l[g];
    }
    workgroupBarrier(); // publishes sc and the sums
    for (var g = 0u; g < GROUP; g++) {
        l[g] = 0.0;
        for (var j = 0u; j < WG; j++) {
            l[g] += part[g * WG + j];
        }
    }

    for (var o = tid; o < GROUP * d4; o += WG) {
        let g = o / d4;
        let i = o - g * d4;
        var acc = vec4<f32>(0.0);
        for (var s = 0u; s < visible; s++) {
            acc = fma(vec4<f32>(sc[g * visible + s]), v4[s * kv_stride + kv_off + i], acc);
        }
        let r = acc / l[g];
        os[o] = r;
        let ob = (t * p.q_heads + head0 + g) * p.head_dim + 4u * i;
        out[ob] = r.x;
        out[ob + 1u] = r.y;
        out[ob + 2u] = r.z;
        out[ob + 3u] = r.w;
    }
    if (tid < GROUP) {
        lse[(head0 + tid) * p.tokens + t] = m[tid] + log(l[tid]);
    }
}

// ---- `decode_o`: `decode`, then the group's share of the output projection o ----
// For a decode step on a CPU device, where a dispatch costs more than o's work: attention and o
// become one dispatch. Workgroup (t, h') also multiplies its group's out rows (GROUP·Dh values, in
// `os`) by their columns of Wo [D, Hq·Dh] (Linear [out, in]):
//   proj[h', t, n] = Σ_{j < GROUP·Dh} out[t, h'·GROUP·Dh + j] · Wo[n, h'·GROUP·Dh + j]   (n < D)
// so o's output is Hkv partial products [Hkv, tokens, D], summed by the MLP's residual in order.
// Thread `tid` owns rows n = n0 + j·WG (j < 4) for n0 = tid, tid + 4·WG, ...: each value of `os`
// loaded serves 4 rows, four columns a step (Dh % 4 = 0). Wo is read through `wo_at4` (binding 6),
// the `weight_<format>.wgsl` seam renamed by the launcher (src/gpu/attention.rs), which composes it
// after this file for this entry only; D is p.d_model.

@group(0) @binding(7) var<storage, read_write> proj: array<f32>;

@compute @workgroup_size(WG)
fn decode_o(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) groups: vec3<u32>) {
    let row = wid.y * groups.x + wid.x;
    if (row >= p.tokens * p.kv_heads) {
        return; // uniform per workgroup
    }
    let tid = lid.x;
    decode_row(tid, row);
    workgroupBarrier(); // os holds every head of the group
    let t = row / p.kv_heads;
    let hk = row - t * p.kv_heads;
    let qd = p.q_heads * p.head_dim;              // Wo's row length
    let col0 = hk * GROUP * p.head_dim;           // the group's first column of Wo
    let len = GROUP * p.head_dim / 4u;
    for (var n0 = tid; n0 < p.d_model; n0 += 4u * WG) {
        // A row past D reads row 0 and is not stored.
        var start: array<u32, 4>;
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + j * WG;
            start[j] = select(0u, n * qd, n < p.d_model) + col0;
        }
        var acc = vec4<f32>(0.0);
        for (var i = 0u; i < len; i++) {
            let w = mat4x4<f32>(wo_at4(start[0] + 4u * i), wo_at4(start[1] + 4u * i), wo_at4(start[2] + 4u * i), wo_at4(start[3] + 4u * i));
            acc += os[i] * w;
        }
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + j * WG;
            if (n < p.d_model) {
                proj[(hk * p.tokens + t) * p.d_model + n] = acc[j];
            }
        }
    }
}
