// matvec_pair: two products of one A by two weights of one shape, in one dispatch (f32 sums; A has
// M ≤ 8 rows), finished two ways:
//   entry `glu`:   C[m, n] = silu(A[m] · G[n]) · (A[m] · U[n])   SwiGLU's gate, up and silu_mul
//   entry `main`:  C[m, n] = A[m] · G[n],  C2[m, n] = A[m] · U[n]  a layer's k and v
//   entry `mlp`:   a Llama MLP from the residual stream: S = A + Σ_j ADD[j] (the attention's
//                  output), H = rmsnorm(S) · NORM_W, F = silu(H · Gᵀ) · (H · Uᵀ), and per
//                  workgroup g its share of the down product, C[g, m, o] = Σ_{n of g} F[m, n] · D[o, n]
//                  for every o < K: the MLP's output as G partial products (summed by the next
//                  residual_norm, `parts` = G), S written by workgroup 0 into C2. Three dispatches (norm,
//                  glu, down) become one; D [K, N] is Linear [out, in] in the same format, N % 4 = 0.
// For a decode step on a CPU device: there each dispatch costs ~35 µs of thread-pool hand-off
// (lavapipe), about what the work of a default-model token's small products costs, so three
// dispatches become one (glu) and two become one (main). The weights are Linear [out, in] (X·Wᵀ):
// G and U [N, K] in the same format, K % 4 = 0; the launcher (src/gpu/matvec_pair.rs) takes nothing
// else and the model falls back to the separate dispatches. A [M, K], C and C2 [M, N] are row-major
// and contiguous. The sums are matvec.wgsl's `main_vec4` for X·Wᵀ (`rows_of_b4`): four values of K
// a step, one vec4 × mat4x4 per row and weight (the same sums in the same order), and silu is
// silu_mul.wgsl's.
//
// Dispatch: THREADS threads per workgroup (override; 32, matvec's CPU choice), thread `col` of
// workgroup g = workgroup_id.y · num_workgroups.x + workgroup_id.x owns columns
// g · THREADS · 4 + col + j · THREADS, j < 4, over the whole of K. ROWS (override, = M) fixes the
// accumulator count so the per-row loops unroll.
//
// The `mlp` entry's norm is stage_norm.wgsl's `stage_norm` (shared with matvec_qkv's `normed`),
// composed after this file.
// The weight seam: G is read through `weight_at4` (binding 1) of the `weight_<format>.wgsl` composed
// after this file, U through `up_at4` (binding 4) of the same file with its names renamed by the
// launcher (weight → up, binding 1 → 4): one format source serves both operands.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    parts: u32, // `mlp`: ADD's partial products
    eps: f32,   // `mlp`: the norm's epsilon
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

// A and ADD are read four values a load (K % 4 = 0, rows contiguous): on lavapipe each load costs
// a loop over the SIMD lanes, so one vec4 load is much cheaper than four scalar ones.
@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
// binding 1: G (`weight`), binding 4: U (`up`)
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read_write> c2: array<f32>;
// `mlp` only (binding 8: D, `down`, the seam renamed once more; c2 receives S):
@group(0) @binding(6) var<storage, read> add: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> norm_w: array<vec4<f32>>;

override ROWS: u32 = 1u;
override THREADS: u32 = 32u;
// `mlp`: A is H, staged in workgroup memory (the entries that keep NORM false read A from binding 0).
override NORM: bool = false;
const MAX_ROWS: u32 = 8u;
// Workgroup memory (16 KiB): H [ROWS, K] (ROWS · K ≤ STAGED, the launcher's check), F of the
// workgroup's columns [ROWS, 4 · THREADS ≤ 128], the norm's partial sums.
const STAGED: u32 = 2944u;
var<workgroup> xs: array<vec4<f32>, STAGED / 4u>;
var<workgroup> fs: array<f32, 1024>;
var<workgroup> red: array<f32, 128>;

// Both products of the thread's four columns: component j of g[m] (u[m]) is row m's sum for column
// col0 + col + j·THREADS.
struct Sums {
    g: array<vec4<f32>, MAX_ROWS>,
    u: array<vec4<f32>, MAX_ROWS>,
}

fn first_column(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * THREADS * 4u;
}

fn sums(col0: u32, col: u32) -> Sums {
    var s = Sums();
    // A column past N reads row 0 of the weights and is not stored.
    var start: array<u32, 4>;
    for (var j = 0u; j < 4u; j++) {
        let n = col0 + col + j * THREADS;
        start[j] = select(0u, n * p.k, n < p.n);
    }
    for (var k = 0u; k < p.k; k += 4u) {
        let wg = mat4x4<f32>(weight_at4(start[0] + k), weight_at4(start[1] + k), weight_at4(start[2] + k), weight_at4(start[3] + k));
        let wu = mat4x4<f32>(up_at4(start[0] + k), up_at4(start[1] + k), up_at4(start[2] + k), up_at4(start[3] + k));
        for (var m = 0u; m < ROWS; m++) {
            let r = (m * p.k + k) >> 2u;
            var x: vec4<f32>;
            if (NORM) {
                x = xs[r];
            } else {
                x = a[r];
            }
            s.g[m] += x * wg;
            s.u[m] += x * wu;
        }
    }
    return s;
}

// silu(g) = g / (1 + e^−g), in silu_mul.wgsl's overflow-free form for negative g.
fn silu(g: f32) -> f32 {
    if (g >= 0.0) {
        return g / (1.0 + exp(-g));
    }
    let e = exp(g);
    return g * e / (1.0 + e);
}

@compute @workgroup_size(THREADS, 1, 1)
fn glu(@builtin(local_invocation_index) col: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let col0 = first_column(wid, nwg);
    let s = sums(col0, col);
    for (var j = 0u; j < 4u; j++) {
        let n = col0 + col + j * THREADS;
        if (n < p.n) {
            for (var m = 0u; m < ROWS; m++) {
                c[m * p.n + n] = silu(s.g[m][j]) * s.u[m][j];
            }
        }
    }
}

@compute @workgroup_size(THREADS, 1, 1)
fn main(@builtin(local_invocation_index) col: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let col0 = first_column(wid, nwg);
    let s = sums(col0, col);
    for (var j = 0u; j < 4u; j++) {
        let n = col0 + col + j * THREADS;
        if (n < p.n) {
            for (var m = 0u; m < ROWS; m++) {
                c[m * p.n + n] = s.g[m][j];
                c2[m * p.n + n] = s.u[m][j];
            }
        }
    }
}

@compute @workgroup_size(THREADS, 1, 1)
fn mlp(@builtin(local_invocation_index) col: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wid.y * nwg.x + wid.x;
    let col0 = g * THREADS * 4u;
    if (col0 >= p.n) {
        return; // the grid's padding (uniform over the workgroup, before any barrier)
    }
    stage_norm(col, g == 0u, p.k, p.parts, p.eps); // shaders/stage_norm.wgsl
    let s = sums(col0, col);
    // F of this workgroup's columns: fs[m · 4 · THREADS + j · THREADS + col] (0 past N).
    for (var j = 0u; j < 4u; j++) {
        let n = col0 + col + j * THREADS;
        for (var m = 0u; m < ROWS; m++) {
            fs[m * 4u * THREADS + j * THREADS + col] = select(0.0, silu(s.g[m][j]) * s.u[m][j], n < p.n);
        }
    }
    workgroupBarrier();
    // Its share of the down product: rows o of D over this workgroup's columns, four rows a thread
    // (o0 + j · THREADS) so that each value of F loaded serves 4 FMAs, four columns a step (N % 4 =
    // 0, so the last workgroup's columns end on a multiple of 4). A row past K reads row 0.
    let len = min(THREADS * 4u, p.n - col0);
    for (var o0 = col; o0 < p.k; o0 += THREADS * 4u) {
        var start: array<u32, 4>;
        for (var j = 0u; j < 4u; j++) {
            let o = o0 + j * THREADS;
            start[j] = select(0u, o * p.n, o < p.k) + col0;
        }
        // Zeroed explicitly for each o0: on SwiftShader (Chrome) a `var` declared without an
        // initializer inside a loop kept the previous iteration's sums (as in attention.wgsl).
        var acc: array<vec4<f32>, MAX_ROWS>;
        for (var m = 0u; m < ROWS; m++) {
            acc[m] = vec4<f32>(0.0);
        }
        for (var i = 0u; i < len; i += 4u) {
            let w = mat4x4<f32>(down_at4(start[0] + i), down_at4(start[1] + i), down_at4(start[2] + i), down_at4(start[3] + i));
            for (var m = 0u; m < ROWS; m++) {
                let f = m * 4u * THREADS + i;
                acc[m] += vec4<f32>(fs[f], fs[f + 1u], fs[f + 2u], fs[f + 3u]) * w;
            }
        }
        for (var j = 0u; j < 4u; j++) {
            let o = o0 + j * THREADS;
            if (o < p.k) {
                for (var m = 0u; m < ROWS; m++) {
                    c[(g * p.m + m) * p.k + o] = acc[m][j];
                }
            }
        }
    }
}
