// attention_backward: the gradients of causal grouped-query attention for training, without a KV
// cache (past = 0, so the sequence length S equals the token count T), recomputing the probabilities
// tile by tile from q, k and the forward's logsumexp instead of reading a stored [Hq, T, T] matrix.
// Query head h reads key/value head h' = h / group (group = Hq / Hkv); query t sees keys s ≤ t;
// scale = 1/√Dh.
//   P[h, t, s]  = exp(q[t, h]·k[s, h'] · scale − lse[h, t])   (s ≤ t; recomputed, never stored)
//   D[h, t]     = dout[t, h] · out[t, h]                       (= Σ_s P[h, t, s] · dP[h, t, s])
//   dP[h, t, s] = dout[t, h] · v[s, h']
//   dS[h, t, s] = P[h, t, s] · (dP[h, t, s] − D[h, t])
//   dq[t, h]    = scale · Σ_s dS[h, t, s] · k[s, h']
//   dk[s, h']   = scale · Σ_{h in group h'} Σ_{t ≥ s} dS[h, t, s] · q[t, h]
//   dv[s, h']   = Σ_{h in group h'} Σ_{t ≥ s} P[h, t, s] · dout[t, h]
// Layout (f32, row-major): q, out, dout, dq [T, Hq·Dh]; k, v, dk, dv [T, Hkv·Dh]; lse and the
// scratch delta (receives D) [Hq, T].
// Two entry points, dispatched in this order (separate passes, so the second sees all of delta):
//   dq_main:  one workgroup of WG threads per (t, h), row index t·Hq + h. D by a workgroup
//             reduction, then per tile of WG keys each thread recomputes one key's dS into workgroup
//             memory and teams of Dh threads (WG / Dh teams; Dh ≤ WG) accumulate dS·k over every
//             team-th key of the tile; the teams' partial rows are summed.
//   dkv_main: one workgroup of WG threads per (s, h'), row index s·Hkv + h'. Per tile of WG
//             (query head of the group, t ≥ s) pairs each thread recomputes one pair's P and dS
//             into workgroup memory, then teams of Dh threads accumulate dk and dv over every
//             team-th pair; the teams' partial rows are summed. Every kv head's row is owned by one
//             workgroup: the sum over the group needs no atomics.
// Both grids are 2-D (x ≤ the per-dimension limit, spilling into y); rows are rebuilt from
// num_workgroups. WG ≥ Dh is the override of shaders/workgroup_reduce.wgsl (256; fewer on a CPU,
// see gpu::row_workgroup). Each entry point binds only the buffers it uses (8 storage
// buffers each, WebGPU's default limit per stage; the launcher binds them by number).

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
@group(0) @binding(3) var<storage, read> out: array<f32>;
@group(0) @binding(4) var<storage, read> lse: array<f32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
@group(0) @binding(6) var<storage, read_write> delta: array<f32>;
@group(0) @binding(7) var<storage, read_write> dq: array<f32>;
@group(0) @binding(8) var<storage, read_write> dk: array<f32>;
@group(0) @binding(9) var<storage, read_write> dv: array<f32>;
@group(0) @binding(10) var<uniform> p: Params;

// WG (threads per workgroup, ≥ Dh): the override declared in shaders/workgroup_reduce.wgsl.

var<workgroup> row_a: array<f32, 256>;   // dq_main: q[t, h];    dkv_main: k[s, h']
var<workgroup> row_b: array<f32, 256>;   // dq_main: dout[t, h]; dkv_main: v[s, h']
var<workgroup> ds_tile: array<f32, 256>;
var<workgroup> p_tile: array<f32, 256>;
var<workgroup> scratch_v: array<f32, 256>;

// workgroup_sum / workgroup_max / workgroup_sum2 and `scratch`: shaders/workgroup_reduce.wgsl.

@compute @workgroup_size(WG)
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
    let q_base = row * dh;                       // q[t, h·Dh], also out's, dout's and dq's
    let kv_stride = p.kv_heads * dh;
    let kv_off = (h / p.group) * dh;
    let ht = h * p.tokens + t;

    var od = 0.0;
    if (tid < dh) {
        row_a[tid] = q[q_base + tid];
        let g = dout[q_base + tid];
        row_b[tid] = g;
        od = g * out[q_base + tid];
    }
    // The reduction's barriers also publish row_a and row_b.
    let big_d = workgroup_sum(tid, od);
    let m = lse[ht];
    if (tid == 0u) {
        delta[ht] = big_d;
    }

    let teams = WG / dh;
    let team = tid / dh;
    let d = tid - team * dh;
    var acc = 0.0;
    for (var s0 = 0u; s0 < visible; s0 += WG) {
        let s = s0 + tid;
        var ds = 0.0;
        if (s < visible) {
            let kv_base = s * kv_stride + kv_off;
            var x = 0.0;
            var dp = 0.0;
            for (var i = 0u; i < dh; i++) {
                x = fma(row_a[i], k[kv_base + i], x);
                dp = fma(row_b[i], v[kv_base + i], dp);
            }
            ds = exp(x * p.scale - m) * (dp - big_d);
        }
        ds_tile[tid] = ds;
        workgroupBarrier();
        if (team < teams) {
            let n = min(WG, visible - s0);
            for (var j = team; j < n; j += teams) {
                acc = fma(ds_tile[j], k[(s0 + j) * kv_stride + kv_off + d], acc);
            }
        }
        workgroupBarrier(); // everyone has read ds_tile before the next tile overwrites it
    }
    scratch[tid] = acc;
    workgroupBarrier();
    if (tid < dh) {
        var r = 0.0;
        for (var g = 0u; g < teams; g++) {
            r += scratch[g * dh + tid];
        }
        dq[q_base + tid] = r * p.scale;
    }
}

@compute @workgroup_size(WG)
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
    let kv_base = row * dh;                      // [s, h'·Dh], also dk's and dv's

    if (tid < dh) {
        row_a[tid] = k[kv_base + tid];
        row_b[tid] = v[kv_base + tid];
    }
    workgroupBarrier();

    let teams = WG / dh;
    let team = tid / dh;
    let d = tid - team * dh;
    var acc_k = 0.0;
    var acc_v = 0.0;
    for (var j0 = 0u; j0 < pairs; j0 += WG) {
        let j = j0 + tid;
        var pr = 0.0;
        var ds = 0.0;
        if (j < pairs) {
            let gi = j / later;
            let t = s + (j - gi * later);
            let h = kvh * p.group + gi;
            let qo = (t * p.q_heads + h) * dh;
            var x = 0.0;
            var dp = 0.0;
            for (var i = 0u; i < dh; i++) {
                x = fma(q[qo + i], row_a[i], x);
                dp = fma(dout[qo + i], row_b[i], dp);
            }
            let ht = h * p.tokens + t;
            pr = exp(x * p.scale - lse[ht]);
            ds = pr * (dp - delta[ht]);
        }
        p_tile[tid] = pr;
        ds_tile[tid] = ds;
        workgroupBarrier();
        if (team < teams) {
            let n = min(WG, pairs - j0);
            for (var jj = team; jj < n; jj += teams) {
                let jt = j0 + jj;
                let gi = jt / later;
                let t = s + (jt - gi * later);
                let qo = (t * p.q_heads + kvh * p.group + gi) * dh + d;
                acc_k = fma(ds_tile[jj], q[qo], acc_k);
                acc_v = fma(p_tile[jj], dout[qo], acc_v);
            }
        }
        workgroupBarrier(); // everyone has read the tiles before the next tile overwrites them
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
        dk[kv_base + tid] = rk * p.scale;
        dv[kv_base + tid] = rv;
    }
}
