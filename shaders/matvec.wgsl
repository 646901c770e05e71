// matvec: C[b] = alpha * A[b] · op(B[b]) + beta * C[b] + bias      (f32 throughout; A has M ≤ 8 rows)
//
// The small-M case of matmul.wgsl (one token per step of generation, a handful of rows): the same
// Params and the same semantics, for the two layouts a frozen weight is read in:
//   X·W    trans_b = 0   A [M, K], B [K, N]
//   X·Wᵀ   trans_b = 1   A [M, K], B [N, K]
// (trans_a must be 0: the launcher sends transposed A to matmul.wgsl.) A is [M, K] with row pitch lda
// starting at a_offset; C is [M, N] with row pitch ldc starting at c_offset; bias is read at
// bias_offset + column; batches (workgroup_id.z) start at b * stride_{a,b,c}; beta = 0 never reads C.
// The 64 × 64 tiles of matmul.wgsl would be 63/64 padding here: this kernel does M·N·K FMAs and reads
// B exactly once.
//
// Dispatch: THREADS threads per workgroup (override: 256, or 32 on a CPU; see below); workgroup
// g = workgroup_id.y · num_workgroups.x + workgroup_id.x (the grid spills into y past the
// per-dimension cap) owns COLS = THREADS / LANES consecutive columns of C (THREADS · WIDTH when
// LANES = 1), and the LANES threads of one column split K (k ≡ lane mod LANES), each keeping ROWS partial
// sums (one per row of A), then summed over the lanes through workgroup memory, one barrier. LANES
// (override) is chosen by the launcher so that neighbouring threads read neighbouring words of B on
// a GPU:
//   X·Wᵀ: a column is a row of B, so 32 lanes run along it (thread = 32·column + lane), 8 columns;
//   X·W:  a column is strided, so 64 columns run across threads (thread = column + 64·lane), 4 lanes.
// On a CPU implementation (lavapipe) invocations are SIMD lanes of a core and every load is a
// bounds-checked scalar load: LANES = 1 there (one thread per column over the whole of K, no
// reduction) and WIDTH = 4 columns per thread (columns col, col + THREADS, ...), so that each value
// of A loaded serves 4 FMAs; THREADS (override) is then smaller, to spread N over more workgroups.
// ROWS (override, = M) fixes the accumulator count so the per-row loops unroll.
//
// Entry point `main_vec4`, the CPU path for aligned shapes (K % 4 = 0 for X·Wᵀ, N % 4 = 0 for X·W;
// the launcher picks it, `main` takes the rest): B is read four consecutive values at a time through
// `weight_at4` (one vec4 load for f32, one word's decoding for the packed formats), so each load of B
// serves 4 FMAs, not 1:
//   X·Wᵀ: THREADS · WIDTH columns a workgroup as in `main` (col, col + THREADS, ...), K walked 4 at
//         a time: 4 values of B per column and 4 of each row of A make one vec4 × mat4x4 product.
//   X·W:  one thread per 4 consecutive columns (THREADS · 4 a workgroup), K walked 1 at a time: one
//         weight_at4 and one value per row of A make 4 FMAs.
// A stays a scalar array (its rows may start anywhere in a column block); each of its loads serves
// 4 FMAs either way.
//
// The weight seam: B is read only through `weight_at(i)` / `weight_at4(i)` (flat row-major index),
// from the `weight_<format>.wgsl` the launcher (src/gpu/matmul.rs) appends, as in matmul.wgsl.

// Params and bindings 0 (a), 2 (bias), 3 (c), 4 (p): shaders/matmul_params.wgsl, composed after this file.

override ROWS: u32 = 1u;
override LANES: u32 = 32u;
// Columns per thread when LANES = 1 (1..=4); each workgroup then owns THREADS · WIDTH columns.
override WIDTH: u32 = 1u;
override THREADS: u32 = 256u;
const MAX_ROWS: u32 = 8u;

// partial[m * THREADS + thread]: each thread's sum for row m (THREADS ≤ 256).
var<workgroup> partial: array<f32, 2048>;

// C[m, gn] of batch base_c = alpha · sum (+ beta · C) (+ bias).
fn store(base_c: u32, m: u32, gn: u32, sum: f32) {
    let idx = base_c + m * p.ldc + gn;
    var v = p.alpha * sum;
    if (p.beta != 0.0) {
        v += p.beta * c[idx];
    }
    if (p.has_bias == 1u) {
        v += bias[p.bias_offset + gn];
    }
    c[idx] = v;
}

// LANES = 1: columns col0 + col + j·THREADS (j < WIDTH) over the whole of K, stored directly.
fn wide_columns(col0: u32, col: u32, base_a: u32, base_b: u32, base_c: u32) {
    var acc: array<vec4<f32>, MAX_ROWS>;
    var start: array<u32, 4>;
    for (var j = 0u; j < 4u; j++) {
        // Columns past N (or past WIDTH) read column 0 and are not stored.
        let n = col0 + col + j * THREADS;
        let ok = n < p.n && j < WIDTH;
        start[j] = select(0u, select(n, n * p.k, p.trans_b == 1u), ok);
    }
    let step = select(p.n, 1u, p.trans_b == 1u);
    for (var k = 0u; k < p.k; k++) {
        let o = base_b + k * step;
        var w = vec4<f32>(weight_at(o + start[0]), 0.0, 0.0, 0.0);
        if (WIDTH > 1u) { w.y = weight_at(o + start[1]); }
        if (WIDTH > 2u) { w.z = weight_at(o + start[2]); }
        if (WIDTH > 3u) { w.w = weight_at(o + start[3]); }
        for (var m = 0u; m < ROWS; m++) {
            acc[m] = fma(vec4<f32>(a[base_a + m * p.lda + k]), w, acc[m]);
        }
    }
    for (var j = 0u; j < WIDTH; j++) {
        let n = col0 + col + j * THREADS;
        if (n < p.n) {
            for (var m = 0u; m < ROWS; m++) {
                store(base_c, m, n, acc[m][j]);
            }
        }
    }
}

@compute @workgroup_size(THREADS, 1, 1)
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let wide = p.trans_b == 1u;
    let base_a = p.a_offset + wid.z * p.stride_a;
    let base_b = wid.z * p.stride_b;
    let base_c = p.c_offset + wid.z * p.stride_c;
    if (LANES == 1u) {
        wide_columns((wid.y * nwg.x + wid.x) * THREADS * WIDTH, tid, base_a, base_b, base_c);
        return;
    }
    let cols = THREADS / LANES;
    let lane = select(tid / cols, tid % LANES, wide);
    let col = select(tid % cols, tid / LANES, wide);
    let col0 = (wid.y * nwg.x + wid.x) * cols;
    let n = col0 + col;

    var acc: array<f32, MAX_ROWS>;
    if (n < p.n) {
        // B[k, n] at k·N + n, or B[n, k] at n·K + k: step `LANES` along k either way.
        let start = select(n, n * p.k, wide);
        let step = select(p.n, 1u, wide);
        for (var k = lane; k < p.k; k += LANES) {
            let w = weight_at(base_b + start + k * step);
            for (var m = 0u; m < ROWS; m++) {
                acc[m] = fma(a[base_a + m * p.lda + k], w, acc[m]);
            }
        }
    }
    for (var m = 0u; m < ROWS; m++) {
        partial[m * THREADS + tid] = acc[m];
    }
    workgroupBarrier();

    // One thread per (row, column) of this workgroup's block of C sums that column's lanes.
    for (var o = tid; o < ROWS * cols; o += THREADS) {
        let m = o / cols;
        let j = o % cols;
        let gn = col0 + j;
        if (gn < p.n) {
            var s = 0.0;
            for (var l = 0u; l < LANES; l++) {
                s += partial[m * THREADS + select(j + cols * l, LANES * j + l, wide)];
            }
            store(base_c, m, gn, s);
        }
    }
}

// X·Wᵀ, K % 4 = 0: columns col0 + col + j·THREADS (j < WIDTH), 4 values of K a step.
fn rows_of_b4(col0: u32, col: u32, base_a: u32, base_b: u32, base_c: u32) {
    var acc: array<vec4<f32>, MAX_ROWS>;
    var start: array<u32, 4>;
    for (var j = 0u; j < 4u; j++) {
        let n = col0 + col + j * THREADS;
        start[j] = select(0u, base_b + n * p.k, n < p.n && j < WIDTH);
    }
    for (var k = 0u; k < p.k; k += 4u) {
        // Column j of w is column (col + j·THREADS) of C's four values of B; unused columns stay 0.
        var w = mat4x4<f32>(weight_at4(start[0] + k), vec4<f32>(), vec4<f32>(), vec4<f32>());
        if (WIDTH > 1u) { w[1] = weight_at4(start[1] + k); }
        if (WIDTH > 2u) { w[2] = weight_at4(start[2] + k); }
        if (WIDTH > 3u) { w[3] = weight_at4(start[3] + k); }
        for (var m = 0u; m < ROWS; m++) {
            let r = base_a + m * p.lda + k;
            acc[m] += vec4<f32>(a[r], a[r + 1u], a[r + 2u], a[r + 3u]) * w;
        }
    }
    for (var j = 0u; j < WIDTH; j++) {
        let n = col0 + col + j * THREADS;
        if (n < p.n) {
            for (var m = 0u; m < ROWS; m++) {
                store(base_c, m, n, acc[m][j]);
            }
        }
    }
}

// X·W, N % 4 = 0: columns n .. n + 3 (all inside N), one row of B a step.
fn columns4(n: u32, base_a: u32, base_b: u32, base_c: u32) {
    if (n >= p.n) {
        return;
    }
    var acc: array<vec4<f32>, MAX_ROWS>;
    for (var k = 0u; k < p.k; k++) {
        let w = weight_at4(base_b + k * p.n + n);
        for (var m = 0u; m < ROWS; m++) {
            acc[m] = fma(vec4<f32>(a[base_a + m * p.lda + k]), w, acc[m]);
        }
    }
    for (var m = 0u; m < ROWS; m++) {
        for (var j = 0u; j < 4u; j++) {
            store(base_c, m, n + j, acc[m][j]);
        }
    }
}

@compute @workgroup_size(THREADS, 1, 1)
fn main_vec4(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let base_a = p.a_offset + wid.z * p.stride_a;
    let base_b = wid.z * p.stride_b;
    let base_c = p.c_offset + wid.z * p.stride_c;
    let g = wid.y * nwg.x + wid.x;
    if (p.trans_b == 1u) {
        rows_of_b4(g * THREADS * WIDTH, tid, base_a, base_b, base_c);
    } else {
        columns4((g * THREADS + tid) * 4u, base_a, base_b, base_c);
    }
}
