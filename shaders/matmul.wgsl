// matmul: C[b] = alpha * op(A[b]) · op(B[b]) + beta * C[b] + bias      (f32 throughout)
//
// The three layouts training needs come from two flags:
//   X·W    trans_a = 0, trans_b = 0   A [M, K], B [K, N]
//   X·Wᵀ   trans_a = 0, trans_b = 1   A [M, K], B [N, K]   (Linear forward, dX = dY·W)
//   Xᵀ·G   trans_a = 1, trans_b = 0   A [K, M], B [K, N]   (weight gradients)
//   Xᵀ·Wᵀ  trans_a = 1, trans_b = 1   A [K, M], B [N, K]   (LoRA merge into a Conv1D [in, out] weight)
// A (when not transposed) is [M, K] with row pitch lda starting at a_offset: a block of columns of a
// wider matrix when lda > K (the logits' gradient for one part of a split vocabulary).
// C is [M, N] with row pitch ldc starting at c_offset (a block of columns of a wider matrix when
// ldc > N, e.g. one part of a vocabulary split across buffers); bias is read at bias_offset + column.
// Batches (workgroup_id.z) start at b * stride_{a,b,c}; a stride of 0 shares
// the operand across the batch. bias [N] is added per column when has_bias = 1. beta = 0 never reads C,
// so C may hold garbage (BLAS semantics).
//
// Dispatch: workgroups (ceil(N / TILE_N), ceil(M / TILE_M), batches) of TX × TY threads, where
// TILE_N = 4·TX and TILE_M = BM·TY: the override constants below pick the variant (see
// src/gpu/tune.rs: the launcher times the variants on the device and keeps the fastest; the
// defaults, 16 × 16 threads of 4 × 4 blocks = 64 × 64 tiles, are the variant used untuned).
// Thread (lx, ly) accumulates the BM × 4 register block at rows BM·ly + i and columns 4·lx + j as
// BM vec4 rows. K advances in slices of 16 staged through workgroup memory as vec4s: per k, a
// thread reads BM / 4 vec4s of A (its rows, the same for all TX threads of a row: a broadcast)
// and one vec4 of B (its 4 columns; TX neighbouring threads read 4·TX consecutive floats), then
// does BM vec4 FMAs. Every variant adds each C value's products in the same order (k ascending,
// one fma each), so all variants give bit-identical results.
// In `main` global loads stay scalar and coalesced (consecutive threads take consecutive addresses)
// because A and C may be column blocks at any offset; each becomes one component of a vec4 in
// workgroup memory. `main_vec4` (the variants with vec4 in their name, on aligned shapes; see its
// comment) stages the same slices four consecutive values a load; the products are `main`'s
// (multiply_slice, store_block), so every entry and variant gives bit-identical results.
//
// The weight seam: B (a frozen weight in the forward and dX = dY·W, or an f32 gradient in Xᵀ·G) is
// read only through `weight_at(i) -> f32` (flat row-major index i), at one place: the staging of B's
// slice below. The launcher (src/gpu/matmul.rs) appends one `weight_<format>.wgsl` that declares
// binding 1 (`weight`) and defines weight_at: weight_f32.wgsl for f32. A new storage format for frozen
// weights (f16, bf16, Q8_0, Q4_0, Q4_1) is one more small WGSL file decoding value i from its packed
// words, plus its CPU dequantization for the reference: this file does not change, the tiles stay f32.

// Params and bindings 0 (a), 2 (bias), 3 (c), 4 (p): shaders/matmul_params.wgsl, composed after this file.

override TX: u32 = 16u;  // threads along N; 4 columns each
override TY: u32 = 16u;  // threads along M
override BM: u32 = 4u;   // rows per thread: 4 or 8
const SLICE: u32 = 16u;  // depth of K staged per step
const MAX_BM: u32 = 8u;

override TILE_M: u32 = BM * TY;
override TILE_N: u32 = 4u * TX;
override THREADS: u32 = TX * TY;
override QA: u32 = TILE_M / 4u;  // vec4s per k in tile_a
override QB: u32 = TILE_N / 4u;  // = TX

var<workgroup> tile_a: array<vec4<f32>, SLICE * QA>;  // [SLICE][QA]: rows 4q..4q+3 of k at tile_a[k * QA + q]
var<workgroup> tile_b: array<vec4<f32>, SLICE * QB>;  // [SLICE][QB]: columns 4q..4q+3 of k at tile_b[k * QB + q]

// Where workgroup `wid`'s tile starts: its first row and column of C, and its batch's A, B and C.
struct Origin {
    row0: u32,
    col0: u32,
    base_a: u32,
    base_b: u32,
    base_c: u32,
}

fn origin(wid: vec3<u32>) -> Origin {
    return Origin(wid.y * TILE_M, wid.x * TILE_N, p.a_offset + wid.z * p.stride_a, wid.z * p.stride_b, p.c_offset + wid.z * p.stride_c);
}

@compute @workgroup_size(TX, TY, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let o = origin(wid);
    let tid = lid.y * TX + lid.x;
    var acc: array<vec4<f32>, MAX_BM>;  // zero-initialized

    for (var k0 = 0u; k0 < p.k; k0 += SLICE) {
        // Stage A's TILE_M × 16 slice. Consecutive threads take consecutive addresses of A in memory:
        // along k when A is [M, K], along m when it is stored transposed [K, M].
        for (var e = tid; e < TILE_M * SLICE; e += THREADS) {
            var m: u32;
            var kk: u32;
            if (p.trans_a == 0u) { m = e / SLICE; kk = e % SLICE; } else { kk = e / TILE_M; m = e % TILE_M; }
            let gm = o.row0 + m;
            let gk = k0 + kk;
            var v = 0.0;
            if (gm < p.m && gk < p.k) {
                let idx = select(gm * p.lda + gk, gk * p.m + gm, p.trans_a == 1u);
                v = a[o.base_a + idx];
            }
            tile_a[kk * QA + m / 4u][m % 4u] = v;
        }
        // Stage B's 16 × TILE_N slice, coalesced the same way (along n for [K, N], along k for [N, K]).
        for (var e = tid; e < TILE_N * SLICE; e += THREADS) {
            var n: u32;
            var kk: u32;
            if (p.trans_b == 0u) { kk = e / TILE_N; n = e % TILE_N; } else { n = e / SLICE; kk = e % SLICE; }
            let gn = o.col0 + n;
            let gk = k0 + kk;
            var v = 0.0;
            if (gn < p.n && gk < p.k) {
                let idx = select(gk * p.n + gn, gn * p.k + gk, p.trans_b == 1u);
                v = weight_at(o.base_b + idx);
            }
            tile_b[kk * QB + n / 4u][n % 4u] = v;
        }
        workgroupBarrier();

        multiply_slice(lid, &acc);
        workgroupBarrier();
    }

    store_block(lid, o, &acc);
}

// The BM × 4 block of thread (lx, ly) += the staged slice's products (k ascending, one fma each).
fn multiply_slice(lid: vec3<u32>, acc: ptr<function, array<vec4<f32>, MAX_BM>>) {
    for (var kk = 0u; kk < SLICE; kk++) {
        let bv = tile_b[kk * QB + lid.x];
        for (var g = 0u; g < BM / 4u; g++) {
            let av = tile_a[kk * QA + lid.y * (BM / 4u) + g];
            (*acc)[4u * g] = fma(vec4<f32>(av.x), bv, (*acc)[4u * g]);
            (*acc)[4u * g + 1u] = fma(vec4<f32>(av.y), bv, (*acc)[4u * g + 1u]);
            (*acc)[4u * g + 2u] = fma(vec4<f32>(av.z), bv, (*acc)[4u * g + 2u]);
            (*acc)[4u * g + 3u] = fma(vec4<f32>(av.w), bv, (*acc)[4u * g + 3u]);
        }
    }
}

// C's BM × 4 block of thread (lx, ly) = alpha · acc (+ beta · C) (+ bias), inside M × N.
fn store_block(lid: vec3<u32>, o: Origin, acc: ptr<function, array<vec4<f32>, MAX_BM>>) {
    for (var i = 0u; i < BM; i++) {
        let gm = o.row0 + BM * lid.y + i;
        for (var j = 0u; j < 4u; j++) {
            let gn = o.col0 + 4u * lid.x + j;
            if (gm < p.m && gn < p.n) {
                let idx = o.base_c + gm * p.ldc + gn;
                var v = p.alpha * (*acc)[i][j];
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
}

// A seen as vec4s: one (bounds-checked) load for four values, for `main_vec4` only (no entry point
// binds both views of binding 0).
@group(0) @binding(0) var<storage, read> a4: array<vec4<f32>>;

// `main` with A and B staged four consecutive values a load (A through a4, B through weight_at4),
// for aligned shapes only (the launcher checks: along K for A [M, K] with lda, a_offset and K
// multiples of 4, along M for A [K, M] with M and a_offset multiples of 4; along N for B [K, N]
// with N a multiple of 4, along K for B [N, K] with K a multiple of 4), so that a group of four is
// wholly inside the operand or wholly outside. On a CPU implementation every load is a
// bounds-checked per-invocation load: one for four values costs about what one for one value does.
// The slice and its products are `main`'s, so both give bit-identical results.
@compute @workgroup_size(TX, TY, 1)
fn main_vec4(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let o = origin(wid);
    let tid = lid.y * TX + lid.x;
    var acc: array<vec4<f32>, MAX_BM>;  // zero-initialized

    for (var k0 = 0u; k0 < p.k; k0 += SLICE) {
        // A's slice as TILE_M · SLICE / 4 groups of four, consecutive threads on consecutive groups.
        for (var e = tid; e < TILE_M * SLICE / 4u; e += THREADS) {
            if (p.trans_a == 0u) {
                // Four values of k at one row m: one component of four vec4s of tile_a.
                let m = e / (SLICE / 4u);
                let kk = 4u * (e % (SLICE / 4u));
                let gm = o.row0 + m;
                let gk = k0 + kk;
                var v = vec4<f32>(0.0);
                if (gm < p.m && gk < p.k) {
                    v = a4[(o.base_a + gm * p.lda + gk) >> 2u];
                }
                for (var j = 0u; j < 4u; j++) {
                    tile_a[(kk + j) * QA + m / 4u][m % 4u] = v[j];
                }
            } else {
                // Four values of m at one k: one vec4 of tile_a.
                let kk = e / QA;
                let q = e % QA;
                let gm = o.row0 + 4u * q;
                let gk = k0 + kk;
                var v = vec4<f32>(0.0);
                if (gm < p.m && gk < p.k) {
                    v = a4[(o.base_a + gk * p.m + gm) >> 2u];
                }
                tile_a[kk * QA + q] = v;
            }
        }
        for (var e = tid; e < TILE_N * SLICE / 4u; e += THREADS) {
            if (p.trans_b == 0u) {
                // Four values of n at one k: one vec4 of tile_b.
                let kk = e / QB;
                let q = e % QB;
                let gn = o.col0 + 4u * q;
                let gk = k0 + kk;
                var v = vec4<f32>(0.0);
                if (gn < p.n && gk < p.k) {
                    v = weight_at4(o.base_b + gk * p.n + gn);
                }
                tile_b[kk * QB + q] = v;
            } else {
                // Four values of k at one column n: one component of four vec4s of tile_b.
                let n = e / (SLICE / 4u);
                let kk = 4u * (e % (SLICE / 4u));
                let gn = o.col0 + n;
                let gk = k0 + kk;
                var v = vec4<f32>(0.0);
                if (gn < p.n && gk < p.k) {
                    v = weight_at4(o.base_b + gn * p.k + gk);
                }
                for (var j = 0u; j < 4u; j++) {
                    tile_b[(kk + j) * QB + n / 4u][n % 4u] = v[j];
                }
            }
        }
        workgroupBarrier();
        multiply_slice(lid, &acc);
        workgroupBarrier();
    }
    store_block(lid, o, &acc);
}
