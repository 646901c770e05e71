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
// Dispatch: 256 threads per workgroup; workgroup g = workgroup_id.y · num_workgroups.x + workgroup_id.x
// (the grid spills into y past the per-dimension cap) owns COLS consecutive columns of C, and the
// LANES threads of one column split K (k ≡ lane mod LANES), each keeping ROWS partial sums (one per
// row of A) that are then summed over the lanes through workgroup memory, one barrier. The split is
// chosen so that neighbouring threads read neighbouring words of B:
//   X·Wᵀ: a column is a row of B, so 32 lanes run along it (thread = 32·column + lane), 8 columns;
//   X·W:  a column is strided, so 64 columns run across threads (thread = column + 64·lane), 4 lanes.
// ROWS (override, = M) fixes the accumulator count so the per-row loops unroll.
//
// The weight seam: B is read only through `weight_at(i)` (flat row-major index), from the
// `weight_<format>.wgsl` the launcher (src/gpu/matvec.rs) appends, as in matmul.wgsl.

// Params and bindings 0 (a), 2 (bias), 3 (c), 4 (p): shaders/matmul_params.wgsl, composed after this file.

override ROWS: u32 = 1u;
const MAX_ROWS: u32 = 8u;
const THREADS: u32 = 256u;

// partial[m * THREADS + thread]: each thread's sum for row m.
var<workgroup> partial: array<f32, 2048>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let wide = p.trans_b == 1u;
    let lanes = select(4u, 32u, wide);
    let cols = THREADS / lanes;
    let lane = select(tid / 64u, tid % 32u, wide);
    let col = select(tid % 64u, tid / 32u, wide);
    let col0 = (wid.y * nwg.x + wid.x) * cols;
    let n = col0 + col;
    let base_a = p.a_offset + wid.z * p.stride_a;
    let base_b = wid.z * p.stride_b;
    let base_c = p.c_offset + wid.z * p.stride_c;

    var acc: array<f32, MAX_ROWS>;
    if (n < p.n) {
        // B[k, n] at k·N + n, or B[n, k] at n·K + k: step `lanes` along k either way.
        let start = select(n, n * p.k, wide);
        let step = select(p.n, 1u, wide);
        for (var k = lane; k < p.k; k += lanes) {
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
            for (var l = 0u; l < lanes; l++) {
                s += partial[m * THREADS + select(j + 64u * l, 32u * j + l, wide)];
            }
            let idx = base_c + m * p.ldc + gn;
            var v = p.alpha * s;
            if (p.beta != 0.0) {
                v += p.beta * c[idx];
            }
            if (p.has_bias == 1u) {
                v += bias[p.bias_offset + gn];
            }
            c[idx] = v;
        }
    }
}
