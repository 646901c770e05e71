// matvec_glu: C[m, n] = silu(A[m] · G[n]) · (A[m] · U[n])      (f32 sums; A has M ≤ 8 rows)
//
// SwiGLU's gate and up projections and their product (silu_mul.wgsl) in one dispatch, for a decode
// step on a CPU device: there each dispatch costs ~35 µs of thread-pool hand-off (lavapipe), about
// what the three dispatches' work costs at a default-model token, so three become one. The weights
// are Linear [out, in] (X·Wᵀ): G and U [N, K] in the same format, K % 4 = 0; the launcher
// (src/gpu/matvec_glu.rs) takes nothing else and the model falls back to the three dispatches.
// A [M, K] and C [M, N] are row-major and contiguous. The sums are matvec.wgsl's `main_vec4` for X·Wᵀ
// (`rows_of_b4`): four values of K a step, one vec4 × mat4x4 per row and weight (the same sums in
// the same order), and silu is silu_mul.wgsl's.
//
// Dispatch: THREADS threads per workgroup (override; 32, matvec's CPU choice), thread `col` of
// workgroup g = workgroup_id.y · num_workgroups.x + workgroup_id.x owns columns
// g · THREADS · 4 + col + j · THREADS, j < 4, over the whole of K. ROWS (override, = M) fixes the
// accumulator count so the per-row loops unroll.
//
// The weight seam: G is read through `weight_at4` (binding 1) of the `weight_<format>.wgsl` composed
// after this file, U through `up_at4` (binding 4) of the same file with its names renamed by the
// launcher (weight → up, binding 1 → 4): one format source serves both operands.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
// binding 1: G (`weight`), binding 4: U (`up`)
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

override ROWS: u32 = 1u;
override THREADS: u32 = 32u;
const MAX_ROWS: u32 = 8u;

// silu(g) = g / (1 + e^−g), in silu_mul.wgsl's overflow-free form for negative g.
fn silu(g: f32) -> f32 {
    if (g >= 0.0) {
        return g / (1.0 + exp(-g));
    }
    let e = exp(g);
    return g * e / (1.0 + e);
}

@compute @workgroup_size(THREADS, 1, 1)
fn main(@builtin(local_invocation_index) col: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let col0 = (wid.y * nwg.x + wid.x) * THREADS * 4u;
    var g: array<vec4<f32>, MAX_ROWS>;
    var u: array<vec4<f32>, MAX_ROWS>;
    // Row j of the mat4x4s below is column col0 + col + j·THREADS; one past N reads row 0 of the
    // weights and is not stored.
    var start: array<u32, 4>;
    for (var j = 0u; j < 4u; j++) {
        let n = col0 + col + j * THREADS;
        start[j] = select(0u, n * p.k, n < p.n);
    }
    for (var k = 0u; k < p.k; k += 4u) {
        let wg = mat4x4<f32>(weight_at4(start[0] + k), weight_at4(start[1] + k), weight_at4(start[2] + k), weight_at4(start[3] + k));
        let wu = mat4x4<f32>(up_at4(start[0] + k), up_at4(start[1] + k), up_at4(start[2] + k), up_at4(start[3] + k));
        for (var m = 0u; m < ROWS; m++) {
            let r = m * p.k + k;
            let x = vec4<f32>(a[r], a[r + 1u], a[r + 2u], a[r + 3u]);
            g[m] += x * wg;
            u[m] += x * wu;
        }
    }
    for (var j = 0u; j < 4u; j++) {
        let n = col0 + col + j * THREADS;
        if (n < p.n) {
            for (var m = 0u; m < ROWS; m++) {
                c[m * p.n + n] = silu(g[m][j]) * u[m][j];
            }
        }
    }
}
