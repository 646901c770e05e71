// matvec_qkv: a Llama layer's q, k and v for a few new tokens in one dispatch (f32 sums; x has
// M ≤ 8 rows), RoPE applied to q and k, k and v written straight into the KV cache:
//   q[m]                  = rope(x[m] · Wqᵀ, position row0 + m)      [M, Nq]
//   k_cache[row0 + m]     = rope(x[m] · Wkᵀ, position row0 + m)      [max positions, Nkv]
//   v_cache[row0 + m]     = x[m] · Wvᵀ
// For a decode step on a CPU device, where a dispatch costs ~50 µs of thread-pool hand-off
// (lavapipe): q, k/v, RoPE and the two cache copies (four dispatches and two copies) become one.
// Entry `main` takes x as given; entry `normed` takes the block's input norm too, from the residual
// stream (stage_norm.wgsl, composed after this file): x = rmsnorm(A + Σ_{j < parts} ADD[j]) · NORM_W
// with A at binding 0, ADD [parts, M, K] at 9, NORM_W at 10, and S = A + Σ ADD stored into binding 11
// by workgroup 0 — the residual_norm dispatch between two blocks becomes part of this one. Entry
// `head` runs the last block's residual, the final norm and the LM head the same way (see there).
// RoPE is rope.wgsl's "rotate half" with the same CPU-computed (cos a, sin a) table, pair m · half + i
// for row m, here in a uniform buffer of TABLE_PAIRS pairs (M · half ≤ TABLE_PAIRS, the launcher's
// check) so that `normed` binds 10 storage buffers, what Chrome's SwiftShader offers; the sums are matvec.wgsl's `main_vec4` for X·Wᵀ (four values of K a step, one
// vec4 × mat4x4 per row). Weights are Linear [out, in], all three in one format, K % 4 = 0,
// head_dim = 2 · half even, Nq and Nkv multiples of head_dim; rows of the caches other than
// row0 .. row0 + M and values of q past M · Nq are not written.
//
// Dispatch: THREADS threads per workgroup (override; 32, matvec's CPU choice); workgroup
// g = workgroup_id.y · num_workgroups.x + workgroup_id.x (the grid spills into y) works on q for
// g < gq, on k for the next gkv, on v for the gkv after (a branch uniform over the workgroup: on
// lavapipe it costs one product, not three). Within its product a workgroup owns 2 · THREADS rotation
// pairs; thread t owns pairs p0 = base + t and p0 + THREADS, i.e. 4 columns (i and i + half of the
// pair's head), so it rotates what it computed. ROWS (override, = M) fixes the accumulator count.
//
// The weight seam: Wq is read through `weight_at4` (binding 1) of the `weight_<format>.wgsl` composed
// after this file; Wk through `wk_at4` (binding 4) and Wv through `wv_at4` (binding 5), the same seam
// renamed by the launcher (src/gpu/matvec_qkv.rs), which also repeats the part of this file after the
// "per weight" line once per weight, renamed the same way.

struct Params {
    rows: u32,
    nq: u32,
    nkv: u32,
    k: u32,
    half: u32,
    row0: u32,
    gq: u32,
    gkv: u32,
    parts: u32, // `normed`: ADD's partial products
    eps: f32,   // `normed`: the norm's epsilon
    _p0: u32,
    _p1: u32,
}

// x four values a load (K % 4 = 0, rows contiguous): one lavapipe load loop instead of four.
@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
// binding 1: Wq (`weight`), 4: Wk (`wk`), 5: Wv (`wv`)
@group(0) @binding(2) var<storage, read_write> q: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(6) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(7) var<storage, read_write> v_cache: array<f32>;
// Two (cos, sin) pairs a vec4 (a uniform array's stride is 16 bytes).
const TABLE_PAIRS: u32 = 512u;
@group(0) @binding(8) var<uniform> cos_sin: array<vec4<f32>, TABLE_PAIRS / 2u>;
// `normed` only (stage_norm.wgsl's names; c2 receives S):
@group(0) @binding(9) var<storage, read> add: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read> norm_w: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> c2: array<f32>;

override ROWS: u32 = 1u;
override THREADS: u32 = 32u;
// `normed`: x is the staged norm (xs), not binding 0.
override NORM: bool = false;
const MAX_ROWS: u32 = 8u;
// `normed`'s workgroup memory: x [ROWS, K] (ROWS · K ≤ STAGED, the launcher's check), the norm's
// partial sums.
const STAGED: u32 = 2048u;
var<workgroup> xs: array<vec4<f32>, STAGED / 4u>;
var<workgroup> red: array<f32, 32>;

// Four values of row-major x [ROWS, K] at r · 4.
fn x4(r: u32) -> vec4<f32> {
    if (NORM) {
        return xs[r];
    }
    return a[r];
}

// Column i (hi = 0) or i + half (hi = 1) of rotation pair `pr` (head pr / half, i = pr % half).
fn column(pr: u32, hi: u32) -> u32 {
    return (pr / p.half) * 2u * p.half + pr % p.half + hi * p.half;
}

// Row m's pair (v0, v1) = (column i, column i + half) of pair `pr` of product `part` (0 q, 1 k,
// 2 v): rotated unless v, stored.
fn store(part: u32, m: u32, pr: u32, v0: f32, v1: f32) {
    var v = vec2<f32>(v0, v1);
    if (part < 2u) {
        let j = m * p.half + pr % p.half;
        let both = cos_sin[j >> 1u];
        let cs = select(both.xy, both.zw, (j & 1u) == 1u);
        v = vec2<f32>(v0 * cs.x - v1 * cs.y, v1 * cs.x + v0 * cs.y);
    }
    let lo = column(pr, 0u);
    if (part == 0u) {
        q[m * p.nq + lo] = v.x;
        q[m * p.nq + lo + p.half] = v.y;
    } else if (part == 1u) {
        let r = (p.row0 + m) * p.nkv + lo;
        k_cache[r] = v.x;
        k_cache[r + p.half] = v.y;
    } else {
        let r = (p.row0 + m) * p.nkv + lo;
        v_cache[r] = v.x;
        v_cache[r + p.half] = v.y;
    }
}

@compute @workgroup_size(THREADS, 1, 1)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    project(t, wid.y * nwg.x + wid.x);
}

@compute @workgroup_size(THREADS, 1, 1)
fn normed(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wid.y * nwg.x + wid.x;
    if (g >= p.gq + 2u * p.gkv) {
        return; // the grid's padding (uniform over the workgroup, before any barrier)
    }
    stage_norm(t, g == 0u, p.k, p.parts, p.eps);
    project(t, g);
}

// Entry `head`: a decode step's final norm and LM head, C[m, row0 + n] = H[m] · W[n] for n < nq,
// W = `weight` [nq, K] (binding 1), C = binding 2 with row pitch nkv, H = rmsnorm(A + Σ ADD) · NORM_W
// staged as in `normed` (S stored by workgroup 0). The gq workgroups walk the column blocks of
// 4 · THREADS (block b, b + gq, ...), so a head of many blocks stages the norm only gq times.
@compute @workgroup_size(THREADS, 1, 1)
fn head(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wid.y * nwg.x + wid.x;
    if (g >= p.gq) {
        return; // the grid's padding (uniform over the workgroup, before any barrier)
    }
    stage_norm(t, g == 0u, p.k, p.parts, p.eps);
    for (var b = g; b * 4u * THREADS < p.nq; b += p.gq) {
        // A column past nq reads row 0 of the weight and is not stored.
        let cols = vec4<u32>(b * 4u * THREADS + t) + vec4<u32>(0u, 1u, 2u, 3u) * THREADS;
        let inside = cols < vec4<u32>(p.nq);
        let s = sums_weight(select(vec4<u32>(0u), cols * p.k, inside));
        for (var j = 0u; j < 4u; j++) {
            if (inside[j]) {
                for (var m = 0u; m < ROWS; m++) {
                    q[m * p.nkv + p.row0 + cols[j]] = s[m][j];
                }
            }
        }
    }
}

// Workgroup g's share of q, k or v (see Dispatch above), from x4.
fn project(t: u32, g: u32) {
    var part = 0u;
    var gp = g;
    var n = p.nq;
    if (g >= p.gq) {
        part = 1u + (g - p.gq) / p.gkv;
        gp = (g - p.gq) % p.gkv;
        n = p.nkv;
    }
    if (part > 2u) {
        return; // past the last workgroup of v (the grid's padding)
    }
    let p0 = gp * 2u * THREADS + t;
    let p1 = p0 + THREADS;
    // A pair past the product (n / 2 pairs) reads row 0 of the weight and is not stored.
    let cols = vec4<u32>(column(p0, 0u), column(p0, 1u), column(p1, 0u), column(p1, 1u));
    let start = select(vec4<u32>(0u), cols * p.k, vec4<bool>(2u * p0 < n, 2u * p0 < n, 2u * p1 < n, 2u * p1 < n));
    var s: array<vec4<f32>, MAX_ROWS>;
    if (part == 0u) {
        s = sums_weight(start);
    } else if (part == 1u) {
        s = sums_wk(start);
    } else {
        s = sums_wv(start);
    }
    for (var m = 0u; m < ROWS; m++) {
        if (2u * p0 < n) {
            store(part, m, p0, s[m].x, s[m].y);
        }
        if (2u * p1 < n) {
            store(part, m, p1, s[m].z, s[m].w);
        }
    }
}

// ---- per weight: the launcher repeats the rest of this file for wk and wv, renamed ----

// Row m's sums for the 4 columns of B = `weight` whose rows start at start[j], over the whole of K.
fn sums_weight(start: vec4<u32>) -> array<vec4<f32>, MAX_ROWS> {
    // Zeroed explicitly: `head` calls this in a loop, and on SwiftShader (Chrome) a `var` without an
    // initializer inside a loop kept the previous iteration's sums (as in attention.wgsl).
    var s = array<vec4<f32>, MAX_ROWS>();
    for (var k = 0u; k < p.k; k += 4u) {
        let w = mat4x4<f32>(weight_at4(start.x + k), weight_at4(start.y + k), weight_at4(start.z + k), weight_at4(start.w + k));
        for (var m = 0u; m < ROWS; m++) {
            s[m] += x4((m * p.k + k) >> 2u) * w;
        }
    }
    return s;
}
