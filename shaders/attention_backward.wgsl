// attention_backward: the gradients of causal grouped-query attention for training, without a KV
// cache (past = 0, so the sequence length S equals the token count T). Query head h reads key/value
// head h' = h / group (group = Hq / Hkv); query t sees keys s ≤ t; scale = 1/√Dh.
//   P [Hq, T, T]: the forward's probabilities (0 above the diagonal, never read there)
//   dP[h, t, s] = dout[t, h] · v[s, h']                      (s ≤ t)
//   dS[h, t, s] = P[h, t, s] · (dP[h, t, s] − Σ_s' P[h, t, s'] · dP[h, t, s'])
//   dq[t, h]    = scale · Σ_s dS[h, t, s] · k[s, h']
//   dk[s, h']   = scale · Σ_{h in group h'} Σ_{t ≥ s} dS[h, t, s] · q[t, h]
//   dv[s, h']   = Σ_{h in group h'} Σ_{t ≥ s} P[h, t, s] · dout[t, h]
// Layout (f32, row-major): q, dout, dq [T, Hq·Dh]; k, v, dk, dv [T, Hkv·Dh]; probs and the scratch
// ds [Hq, T, T]. ds receives dS (0 above the diagonal); it first holds dP while a row is computed.
// Two entry points, dispatched in this order (separate passes, so the second sees all of ds):
//   dq_main:  one workgroup of 256 threads per (t, h), row index t·Hq + h. Threads stride over the
//             visible keys for dP and the row sum (a workgroup reduction), write dS, then teams of Dh
//             threads (256 / Dh teams; Dh ≤ 256) accumulate dS·k over every team-th key and the
//             teams' partial rows are summed (as the forward does for P·V).
//   dkv_main: one workgroup of 256 threads per (s, h'), row index s·Hkv + h'. Teams of Dh threads
//             stride over the (query head of the group, t ≥ s) pairs, accumulating dk and dv; the
//             teams' partial rows are summed. Every kv head's row is owned by one workgroup: the sum
//             over the group needs no atomics.
// Both grids are 2-D (x ≤ the per-dimension limit, spilling into y); rows are rebuilt from
// num_workgroups. Each entry point binds only the buffers it uses (6 storage buffers each, under
// WebGPU's default limit of 8 per stage; the launcher binds them by number).

struct Params {
    tokens: u32,
    q_heads: u32,
    kv_heads: u32,
    head_dim: u32,
    group: u32,   // q_heads / kv_heads
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> probs: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read_write> ds: array<f32>;
@group(0) @binding(6) var<storage, read_write> dq: array<f32>;
@group(0) @binding(7) var<storage, read_write> dk: array<f32>;
@group(0) @binding(8) var<storage, read_write> dv: array<f32>;
@group(0) @binding(9) var<uniform> p: Params;

const WG: u32 = 256u;

var<workgroup> scratch_v: array<f32, 256>;
var<workgroup> g_row: array<f32, 256>;

// workgroup_sum / workgroup_max / workgroup_sum2 and `scratch`: shaders/workgroup_reduce.wgsl.

@compute @workgroup_size(256)
fn dq_main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) groups: vec3<u32>) {
    let row = wid.y * groups.x + wid.x;
    if (row >= p.tokens * p.q_heads) {
        return; // uniform per workgroup
    }
    let t = row / p.q_heads;
    let h = row - t * p.q_heads;
    let tid = lid.x;
    let dh = p.head_dim;
    let visible = t + 1u;
    let q_base = row * dh;                       // q[t, h·Dh], also dout's and dq's
    let kv_stride = p.kv_heads * dh;
    let kv_off = (h / p.group) * dh;
    let p_base = (h * p.tokens + t) * p.tokens;

    if (tid < dh) {
        g_row[tid] = dout[q_base + tid];
    }
    workgroupBarrier();

    // dP of the visible keys (kept in ds for now) and Σ P·dP.
    var acc = 0.0;
    for (var s = tid; s < visible; s += WG) {
        let v_base = s * kv_stride + kv_off;
        var dot = 0.0;
        for (var d = 0u; d < dh; d++) {
            dot = fma(g_row[d], v[v_base + d], dot);
        }
        ds[p_base + s] = dot;
        acc = fma(probs[p_base + s], dot, acc);
    }
    let rowdot = workgroup_sum(tid, acc);

    // Each thread revisits only the entries it wrote itself: no barrier needed between the loops.
    for (var s = tid; s < p.tokens; s += WG) {
        if (s < visible) {
            ds[p_base + s] = probs[p_base + s] * (ds[p_base + s] - rowdot);
        } else {
            ds[p_base + s] = 0.0;
        }
    }
    // dS·k reads entries other threads wrote.
    storageBarrier();

    let teams = WG / dh;
    let team = tid / dh;
    let d = tid - team * dh;
    var o = 0.0;
    if (team < teams) {
        let k_col = kv_off + d;
        for (var s = team; s < visible; s += teams) {
            o = fma(ds[p_base + s], k[s * kv_stride + k_col], o);
        }
    }
    scratch[tid] = o;
    workgroupBarrier();
    if (tid < dh) {
        var r = 0.0;
        for (var g = 0u; g < teams; g++) {
            r += scratch[g * dh + tid];
        }
        dq[q_base + tid] = r * p.scale;
    }
}

@compute @workgroup_size(256)
fn dkv_main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) groups: vec3<u32>) {
    let row = wid.y * groups.x + wid.x;
    if (row >= p.tokens * p.kv_heads) {
        return; // uniform per workgroup
    }
    let s = row / p.kv_heads;
    let kvh = row - s * p.kv_heads;
    let tid = lid.x;
    let dh = p.head_dim;
    let later = p.tokens - s;                    // queries t = s .. T−1 see key s
    let pairs = p.group * later;

    let teams = WG / dh;
    let team = tid / dh;
    let d = tid - team * dh;
    var acc_k = 0.0;
    var acc_v = 0.0;
    if (team < teams) {
        for (var j = team; j < pairs; j += teams) {
            let gi = j / later;
            let t = s + (j - gi * later);
            let h = kvh * p.group + gi;
            let idx = (h * p.tokens + t) * p.tokens + s;
            let qo = (t * p.q_heads + h) * dh + d;
            acc_k = fma(ds[idx], q[qo], acc_k);
            acc_v = fma(probs[idx], dout[qo], acc_v);
        }
    }
    scratch[tid] = acc_k;
    scratch_v[tid] = acc_v;
    workgroupBarrier();
    if (tid < dh) {
        var rk = 0.0;
        var rv = 0.0;
        for (var g = 0u; g < teams; g++) {
            rk += scratch[g * dh + tid];
            rv += scratch_v[g * dh + tid];
        }
        let o = row * dh + tid;                  // [s, h'·Dh + d]
        dk[o] = rk * p.scale;
        dv[o] = rv;
    }
}
