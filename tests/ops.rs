//! Every op on the GPU against its CPU reference, on odd shapes (1, 7, 33, 130, ...) that are
//! larger than one workgroup tile (64 × 64 × 16 for matmul) in every dimension.

mod common;
use common::gpu;

use loratab::ops::{Layout, Matmul};
use loratab::reference;
use loratab::rng::Rng;
use loratab::selftest::{check_matmul, gpu_add, gpu_scale, gpu_sum_squares, max_error, MATMUL_TOLERANCE};

const SIZES: [usize; 4] = [1, 7, 33, 130];

/// Every matmul variant the tuner may pick (`gpu::tune::VARIANTS`), set on `ctx` in turn: the
/// tests below run each case once per variant (the first is the default). The variants that stage
/// four values a load run `main` with their tile's constants on shapes that are not multiples of 4
/// (all of these tests' but `matmul_vec4_variants_on_aligned_shapes`), the very pipeline of their
/// plain twin, so those tests take the plain variants only and that one the vec4 ones.
fn variants(ctx: &loratab::gpu::GpuContext) -> impl Iterator<Item = (usize, &'static str)> + '_ {
    variants_where(ctx, |v| !v.vec4)
}

fn variants_where(ctx: &loratab::gpu::GpuContext, keep: fn(&loratab::gpu::tune::Variant) -> bool) -> impl Iterator<Item = (usize, &'static str)> + '_ {
    let all = loratab::gpu::tune::VARIANTS.iter().enumerate().filter(move |(_, v)| keep(v)).map(|(i, v)| (i, v.name));
    all.chain(std::iter::once((usize::MAX, ""))).filter_map(move |(i, name)| {
        // The last item only puts the context back to its tuned choice.
        ctx.set_matmul_variant((i != usize::MAX).then_some(i));
        (i != usize::MAX).then_some((i, name))
    })
}

async fn all_shapes(layout: Layout) {
    let ctx = gpu().await;
    let mut ran = 0;
    for (v, variant) in variants(&ctx) {
        for m in SIZES {
            // A product of at most 8 rows of a row-major A runs the matvec kernel, whatever the variant.
            if v != loratab::gpu::tune::DEFAULT && loratab::gpu::matvec::fits(&Matmul::new(m, 1, 1, layout)) {
                continue;
            }
            for n in SIZES {
                for k in SIZES {
                    let spec = Matmul::new(m, n, k, layout);
                    let e = check_matmul(&ctx, &spec, false, (m * 1000 + n * 10 + k) as u64).await.unwrap();
                    assert!(e <= MATMUL_TOLERANCE, "{variant}: {layout:?} m={m} n={n} k={k}: max error {e}");
                    ran += 1;
                }
            }
        }
    }
    let tiled = if layout.trans_a() { 4 } else { 2 };
    let plain = loratab::gpu::tune::VARIANTS.iter().filter(|v| !v.vec4).count();
    assert_eq!(ran, 64 + (plain - 1) * tiled * 16, "{layout:?}: cases run");
}

gpu_test! {
    async fn matmul_xw_all_odd_shapes() { all_shapes(Layout::XW).await }
}

gpu_test! {
    async fn matmul_xwt_all_odd_shapes() { all_shapes(Layout::XWt).await }
}

gpu_test! {
    async fn matmul_xtg_all_odd_shapes() { all_shapes(Layout::XtG).await }
}

gpu_test! {
    async fn matmul_xtwt_all_odd_shapes() { all_shapes(Layout::XtWt).await }
}

gpu_test! {
    /// The variants that stage four values a load (`main_vec4`) on shapes where they do (every
    /// dimension a multiple of 4, two tiles past 64 and a partial one), in every layout, also
    /// reading A as an aligned column block and batched; and the same shapes through `main` for
    /// one unaligned dimension. Odd shapes above never take `main_vec4`.
    async fn matmul_vec4_variants_on_aligned_shapes() {
        let ctx = gpu().await;
        let mut staged4 = 0;
        for (v, variant) in variants_where(&ctx, |v| v.vec4) {
            let var = loratab::gpu::tune::VARIANTS[v];
            for layout in [Layout::XW, Layout::XWt, Layout::XtG, Layout::XtWt] {
                for (m, n, k) in [(132, 68, 36), (12, 136, 20), (68, 4, 132), (68, 36, 19)] {
                    let mut specs = vec![Matmul::new(m, n, k, layout).scaled(0.5, 1.0), Matmul::new(m, n, k, layout).batched(2, false)];
                    if !layout.trans_a() {
                        specs.push(Matmul::new(m, n, k, layout).from_block(k + 8, 4).into_block(n + 4, 4, 0));
                    }
                    for spec in specs {
                        staged4 += usize::from(var.entry(&spec) == "main_vec4");
                        let e = check_matmul(&ctx, &spec, true, (m + n + k) as u64).await.unwrap();
                        assert!(e <= MATMUL_TOLERANCE, "{variant}: {spec:?}: max error {e}");
                    }
                }
            }
        }
        // Per vec4 variant: the three all-aligned shapes in every spec (3 × 3 for X·W and X·Wᵀ, 3 × 2
        // for Xᵀ·G and Xᵀ·Wᵀ); K = 19 stages four at a time only in Xᵀ·G (A along M, B along N): 2 more.
        let vec4_variants = loratab::gpu::tune::VARIANTS.iter().filter(|v| v.vec4).count();
        assert!(vec4_variants >= 1);
        assert_eq!(staged4, vec4_variants * (2 * 3 * 3 + 2 * 3 * 2 + 2), "aligned products that ran main_vec4");
    }
}

gpu_test! {
    /// Bias, alpha and accumulation (beta = 1) together, in every layout.
    async fn matmul_bias_scale_accumulate() {
        let ctx = gpu().await;
        for (_, variant) in variants(&ctx) {
            for layout in [Layout::XW, Layout::XWt, Layout::XtG] {
                for (m, n, k) in [(1, 130, 7), (65, 129, 33), (130, 1, 17)] {
                    let spec = Matmul::new(m, n, k, layout).scaled(0.5, 1.0);
                    let e = check_matmul(&ctx, &spec, true, 42).await.unwrap();
                    assert!(e <= MATMUL_TOLERANCE, "{variant}: {spec:?}: max error {e}");
                }
            }
        }
    }
}

gpu_test! {
    /// A read as a block of columns of a wider matrix (one vocabulary part of the logits' gradient),
    /// also into a block of C, and batched.
    async fn matmul_reads_a_column_block() {
        let ctx = gpu().await;
        for (_, variant) in variants(&ctx) {
            for layout in [Layout::XW, Layout::XWt] {
                for (m, n, k, lda, col0) in [(1, 7, 33, 40, 7), (65, 33, 70, 300, 130), (130, 1, 1, 2, 1)] {
                    let spec = Matmul::new(m, n, k, layout).from_block(lda, col0).scaled(1.0, 1.0);
                    let e = check_matmul(&ctx, &spec, false, 5).await.unwrap();
                    assert!(e <= MATMUL_TOLERANCE, "{variant}: {spec:?}: max error {e}");
                    let spec = Matmul::new(m, n, k, layout).from_block(lda, col0).into_block(n + 3, 0, 2).batched(2, true);
                    let e = check_matmul(&ctx, &spec, false, 6).await.unwrap();
                    assert!(e <= MATMUL_TOLERANCE, "{variant}: {spec:?}: max error {e}");
                }
            }
        }
    }
}

gpu_test! {
    /// Batched: per-entry operands (attention heads) and a B shared across the batch (a weight).
    async fn matmul_batched() {
        let ctx = gpu().await;
        for (_, variant) in variants(&ctx) {
            for layout in [Layout::XW, Layout::XWt, Layout::XtG] {
                for shared_b in [false, true] {
                    let spec = Matmul::new(33, 70, 65, layout).batched(3, shared_b);
                    let e = check_matmul(&ctx, &spec, shared_b, 7).await.unwrap();
                    assert!(e <= MATMUL_TOLERANCE, "{variant}: {spec:?}: max error {e}");
                }
            }
        }
    }
}

gpu_test! {
    async fn matmul_rejects_short_operands() {
        let ctx = gpu().await;
        let a = ctx.zeros(&[7, 5]).await.unwrap();
        let b = ctx.zeros(&[5, 3]).await.unwrap();
        let c = ctx.zeros(&[7, 3]).await.unwrap();
        let spec = Matmul::new(7, 3, 6, Layout::XW); // k = 6 but A has only 5 columns
        let err = ctx
            .run(|enc| loratab::gpu::matmul::encode(&ctx, enc, &spec, &a, &b, None, &c))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("A has 35 values"), "{err}");
    }
}

gpu_test! {
    async fn add_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(1);
        for n in [1, 7, 255, 256, 257, 70_001] {
            let (a, b) = (rng.vec(n), rng.vec(n));
            let got = gpu_add(&ctx, &a, &b).await.unwrap();
            assert_eq!(got, reference::add::add(&a, &b), "n={n}");
        }
    }
}

gpu_test! {
    async fn scale_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(2);
        for n in [1, 7, 257, 70_001] {
            let a = rng.vec(n);
            let got = gpu_scale(&ctx, -1.75, &a).await.unwrap();
            assert_eq!(got, reference::scale::scale(-1.75, &a), "n={n}");
        }
    }
}

gpu_test! {
    /// Sizes below one workgroup, just over it, and beyond the 1024-workgroup cap (strided loop).
    async fn sum_squares_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(3);
        for n in [1, 7, 256, 257, 33_000, 300_001] {
            let x = rng.vec(n);
            let got = gpu_sum_squares(&ctx, &x).await.unwrap();
            let want = reference::sum_squares::sum_squares(&x);
            let e = max_error(&[got], &[want]);
            assert!(e <= 1e-5, "n={n}: gpu {got} vs reference {want}");
        }
    }
}

gpu_test! {
    /// Past the per-dimension workgroup cap the 1-D grid spills into y; every 1-D kernel must rebuild
    /// its flat index (and its surplus threads of the last grid row must do nothing). The cap is
    /// lowered to 3 workgroups so a few thousand values use a 3 × 7 grid, whatever the device allows.
    async fn elementwise_kernels_spill_into_grid_y() {
        use loratab::gpu::{self as ops, GpuTensor};
        let ctx = gpu().await;
        ctx.set_max_workgroups_per_dim(3);
        assert_eq!(ctx.max_workgroups_per_dim(), 3);
        let n = 5000; // 20 workgroups of 256: 3 per grid row, 7 rows, the last one partly idle
        let mut rng = Rng::new(4);
        let (a, b, c) = (rng.vec(n), rng.vec(n), rng.vec(n));
        let (ag, bg, cg) =
            (ctx.upload(&a, &[n]).await.unwrap(), ctx.upload(&b, &[n]).await.unwrap(), ctx.upload(&c, &[n]).await.unwrap());
        let outs: Vec<GpuTensor> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(ctx.upload(&vec![f32::NAN; n], &[n]).await.unwrap());
            }
            v
        };
        let close = |what: &str, got: &[f32], want: &[f32], tol: f32| {
            let e = max_error(got, want);
            assert!(e <= tol, "{what}: max error {e} over {n} values on a 3-wide grid");
        };

        ctx.run(|enc| ops::add::encode(&ctx, enc, &ag, &bg, &outs[0])).await.unwrap();
        assert_eq!(ctx.read(&outs[0]).await.unwrap(), reference::add::add(&a, &b), "add");
        ctx.run(|enc| ops::scale::encode(&ctx, enc, -1.75, &ag, &outs[0])).await.unwrap();
        assert_eq!(ctx.read(&outs[0]).await.unwrap(), reference::scale::scale(-1.75, &a), "scale");

        let x: Vec<f32> = a.iter().map(|v| v * 8.0).collect();
        let xg = ctx.upload(&x, &[n]).await.unwrap();
        ctx.run(|enc| ops::gelu::encode(&ctx, enc, &xg, &outs[0])).await.unwrap();
        close("gelu", &ctx.read(&outs[0]).await.unwrap(), &reference::gelu::gelu(&x), 1e-5);
        ctx.run(|enc| ops::gelu::encode_backward(&ctx, enc, &xg, &bg, &outs[0])).await.unwrap();
        close("gelu_backward", &ctx.read(&outs[0]).await.unwrap(), &reference::gelu::gelu_backward(&x, &b), 1e-5);

        ctx.run(|enc| ops::silu_mul::encode(&ctx, enc, &xg, &bg, &outs[0])).await.unwrap();
        close("silu_mul", &ctx.read(&outs[0]).await.unwrap(), &reference::silu_mul::silu_mul(&x, &b), 1e-5);
        ctx.run(|enc| ops::silu_mul::encode_backward(&ctx, enc, &xg, &bg, &cg, &outs[0], &outs[1])).await.unwrap();
        let (dgate, dup) = reference::silu_mul::silu_mul_backward(&x, &b, &c);
        close("silu_mul_backward dgate", &ctx.read(&outs[0]).await.unwrap(), &dgate, 1e-5);
        close("silu_mul_backward dup", &ctx.read(&outs[1]).await.unwrap(), &dup, 1e-5);

        // Dropout accumulating onto b: the mask is the reference's bit for bit.
        let og = ctx.upload(&b, &[n]).await.unwrap();
        ctx.run(|enc| ops::dropout::encode(&ctx, enc, &ag, &og, n, 0.25, 7, 1.0)).await.unwrap();
        let mut want = b.clone();
        reference::dropout::dropout(&a, 0.25, 7, 1.0, &mut want);
        assert_eq!(ctx.read(&og).await.unwrap(), want, "dropout");

        // Embedding: 50 tokens of dim 100 from a 60-row table.
        let (vocab, dim, tokens) = (60, 100, 50);
        let table = rng.vec(vocab * dim);
        let ids: Vec<u32> = (0..tokens).map(|t| ((t * 37 + 11) % vocab) as u32).collect();
        let (tg, ig) = (ctx.upload(&table, &[vocab, dim]).await.unwrap(), ctx.upload_u32(&ids, &[tokens]).await.unwrap());
        ctx.run(|enc| ops::embedding::encode(&ctx, enc, &tg, dim, 0, &ig, &outs[2], false)).await.unwrap();
        let mut want = vec![0.0; n];
        reference::embedding::embedding(&table, dim, &ids, &mut want, false);
        assert_eq!(ctx.read(&outs[2]).await.unwrap(), want, "embedding");

        // AdamW step 3 on (param a, grad b, moments |c| and c²).
        let opt = ops::adamw::AdamW { lr: 3e-2, weight_decay: 0.1, ..Default::default() };
        let (m0, v0): (Vec<f32>, Vec<f32>) = c.iter().map(|v| (v * 0.1, v * v * 0.01)).unzip();
        let (pg, mg, vg) =
            (ctx.upload(&a, &[n]).await.unwrap(), ctx.upload(&m0, &[n]).await.unwrap(), ctx.upload(&v0, &[n]).await.unwrap());
        let status = ctx.zeros(&[1]).await.unwrap();
        let slot = ops::adamw::Slot { param: &pg, grad: &bg, m: &mg, v: &vg };
        ctx.run(|enc| ops::adamw::encode(&ctx, enc, &[slot], &status, &opt, 3, 0.5)).await.unwrap();
        let (mut p, mut m, mut v) = (a.clone(), m0.clone(), v0.clone());
        let slot = reference::adamw::Slot { p: &mut p, g: &b, m: &mut m, v: &mut v };
        assert!(reference::adamw::adamw_step(&mut [slot], &opt, 3, 0.5));
        assert_eq!(ctx.read_u32(&status).await.unwrap(), [0], "adamw status");
        close("adamw param", &ctx.read(&pg).await.unwrap(), &p, 1e-6);
        close("adamw m", &ctx.read(&mg).await.unwrap(), &m, 1e-6);
        close("adamw v", &ctx.read(&vg).await.unwrap(), &v, 1e-6);

        // RoPE forward and backward: 50 tokens · 4 heads · 25 pairs = 5000 threads, late positions.
        let (tokens, heads, head_dim, pos0, theta) = (50, 4, 50, 2025, 5e5f32);
        let xr = [a.as_slice(), b.as_slice()].concat();
        let rg = ctx.upload(&xr, &[tokens, heads, head_dim]).await.unwrap();
        ctx.run(|enc| ops::rope::encode(&ctx, enc, &[(&rg, heads)], tokens, head_dim, pos0, theta)).await.unwrap();
        let mut want = xr.clone();
        reference::rope::rope(&mut want, heads, head_dim, pos0, theta);
        close("rope", &ctx.read(&rg).await.unwrap(), &want, 1e-5);
        let rg = ctx.upload(&xr, &[tokens, heads, head_dim]).await.unwrap();
        ctx.run(|enc| ops::rope::encode_backward(&ctx, enc, &[(&rg, heads)], tokens, head_dim, pos0, theta)).await.unwrap();
        let mut want = xr.clone();
        reference::rope::rope_backward(&mut want, heads, head_dim, pos0, theta);
        close("rope_backward", &ctx.read(&rg).await.unwrap(), &want, 1e-5);
    }
}

gpu_test! {
    /// C written as column blocks of a wider matrix (a vocabulary split across buffers): each block
    /// lands in its columns, takes its slice of the bias, and leaves the other columns alone.
    async fn matmul_into_column_blocks() {
        let ctx = gpu().await;
        let (m, k, n_total) = (9, 33, 130);
        let mut rng = Rng::new(11);
        let a = rng.vec(m * k);
        let w = rng.vec(n_total * k); // [n_total, k], split by rows into parts of 70 and 60
        let bias = rng.vec(n_total);
        let c0 = rng.vec(m * n_total + 5);
        let mut want = c0.clone();
        let mut got = c0.clone();
        for (col0, cols) in [(0, 70), (70, 60)] {
            let part = &w[col0 * k..(col0 + cols) * k];
            let spec = Matmul::new(m, cols, k, Layout::XWt).into_block(n_total, 5, col0);
            reference::matmul::matmul(&spec, &a, part, Some(&bias), &mut want);
            got = loratab::selftest::gpu_matmul(&ctx, &spec, &a, part, Some(&bias), &got).await.unwrap();
        }
        assert!(max_error(&got, &want) <= MATMUL_TOLERANCE);
        // The blocks together equal one full matmul.
        let mut full = c0.clone();
        let spec = Matmul::new(m, n_total, k, Layout::XWt).into_block(n_total, 5, 0);
        reference::matmul::matmul(&spec, &a, &w, Some(&bias), &mut full);
        assert!(max_error(&want, &full) <= 1e-6);
        assert_eq!(&got[..5], &c0[..5], "columns before the block are untouched");
    }
}

gpu_test! {
    /// The GPU mask is the reference's bit for bit (overwrite and accumulate), keeps about 1 − p of
    /// the elements, differs between seeds, and keeps the mean (inverted dropout).
    async fn dropout_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(9);
        for (n, p, seed) in [(1, 0.5, 1), (257, 0.1, 2), (70_001, 0.25, 3), (4096, 0.0, 4)] {
            let x: Vec<f32> = rng.vec(n).iter().map(|v| v + 2.0).collect();
            let base = rng.vec(n);
            let (gx, gout) = (ctx.upload(&x, &[n]).await.unwrap(), ctx.upload(&base, &[n]).await.unwrap());
            ctx.run(|enc| loratab::gpu::dropout::encode(&ctx, enc, &gx, &gout, n, p, seed, 1.0)).await.unwrap();
            let got = ctx.read(&gout).await.unwrap();
            let mut want = base.clone();
            reference::dropout::dropout(&x, p, seed, 1.0, &mut want);
            assert_eq!(got, want, "accumulate n={n} p={p}");
            ctx.run(|enc| loratab::gpu::dropout::encode(&ctx, enc, &gx, &gout, n, p, seed, 0.0)).await.unwrap();
            let got = ctx.read(&gout).await.unwrap();
            reference::dropout::dropout(&x, p, seed, 0.0, &mut want);
            assert_eq!(got, want, "overwrite n={n} p={p}");
            if n >= 4096 {
                let kept = got.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
                assert!((kept - (1.0 - p as f64)).abs() < 0.02, "n={n} p={p}: kept {kept}");
                let mean = |v: &[f32]| v.iter().map(|&a| a as f64).sum::<f64>() / n as f64;
                assert!((mean(&got) - mean(&x)).abs() < 0.05 * mean(&x), "inverted dropout keeps the mean");
            }
        }
        let a: Vec<bool> = (0..1000).map(|i| reference::dropout::keep(1, i, 0.5)).collect();
        let b: Vec<bool> = (0..1000).map(|i| reference::dropout::keep(2, i, 0.5)).collect();
        assert!(a.iter().zip(&b).filter(|(x, y)| x != y).count() > 400, "seeds give different masks");
    }
}

// ---------------------------------------------------------------------------------------------
// Frozen weights kept compact (f16, bf16, Q8_0, Q4_0, Q4_1): decoded inside the kernels.

use loratab::model::{HostTensor, Weight, WeightFormat};

/// A random [rows, cols] weight packed in `format`, its GPU copy, and its CPU dequantization.
async fn packed(ctx: &loratab::gpu::GpuContext, rng: &mut Rng, rows: usize, cols: usize, format: WeightFormat) -> (loratab::gpu::GpuTensor, Vec<f32>) {
    let w = Weight::from_f32(&HostTensor::new(rng.vec(rows * cols), vec![rows, cols]), format, "w").unwrap();
    let gpu = ctx.upload_weight(&w).await.unwrap();
    assert_eq!(gpu.format, format);
    assert_eq!(gpu.bytes(), format.bytes(rows * cols));
    (gpu, w.to_f32().data)
}

gpu_test! {
    /// Every format's decoding on the GPU equals the CPU reference bit for bit, read both ways a
    /// kernel reads a weight: the embedding lookup (row by row) and matmul's B operand (X·W with
    /// X = I reads it along rows, X·Wᵀ with X = I along columns; multiplying by 1 and adding 0s is
    /// exact).
    async fn weight_formats_decode_exactly_on_the_gpu() {
        let ctx = gpu().await;
        let mut rng = Rng::new(90);
        for format in WeightFormat::ALL {
            for (rows, cols) in [(3, 64), (37, 96)] {
                let (w, want) = packed(&ctx, &mut rng, rows, cols, format).await;
                let ids: Vec<u32> = (0..rows as u32).collect();
                let i = ctx.upload_u32(&ids, &[rows]).await.unwrap();
                let o = ctx.zeros(&[rows, cols]).await.unwrap();
                ctx.run(|enc| loratab::gpu::embedding::encode(&ctx, enc, &w, cols, 0, &i, &o, false)).await.unwrap();
                assert_eq!(ctx.read(&o).await.unwrap(), want, "{format} embedding {rows}x{cols}");

                // X·W: W read as B [K = rows, N = cols]; C = W.
                let eye = |n: usize| (0..n * n).map(|j| if j % (n + 1) == 0 { 1.0 } else { 0.0 }).collect::<Vec<f32>>();
                let a = ctx.upload(&eye(rows), &[rows, rows]).await.unwrap();
                let c = ctx.zeros(&[rows, cols]).await.unwrap();
                let spec = Matmul::new(rows, cols, rows, Layout::XW);
                ctx.run(|enc| loratab::gpu::matmul::encode(&ctx, enc, &spec, &a, &w, None, &c)).await.unwrap();
                assert_eq!(ctx.read(&c).await.unwrap(), want, "{format} X·W {rows}x{cols}");

                // X·Wᵀ: W read as B [N = rows, K = cols]; C = Wᵀ.
                let a = ctx.upload(&eye(cols), &[cols, cols]).await.unwrap();
                let c = ctx.zeros(&[cols, rows]).await.unwrap();
                let spec = Matmul::new(cols, rows, cols, Layout::XWt);
                ctx.run(|enc| loratab::gpu::matmul::encode(&ctx, enc, &spec, &a, &w, None, &c)).await.unwrap();
                let got = ctx.read(&c).await.unwrap();
                let transposed: Vec<f32> = (0..cols * rows).map(|j| want[(j % rows) * cols + j / rows]).collect();
                assert_eq!(got, transposed, "{format} X·Wᵀ {rows}x{cols}");
            }
        }
    }
}

gpu_test! {
    /// A matmul whose weight is compact equals the f32 reference run on the dequantized weight, in
    /// both layouts a frozen weight is read in (forward X·Wᵀ / GPT-2's X·W, and the input gradient
    /// dY·W), with bias, scale and accumulation, into and from column blocks (a split vocabulary).
    async fn compact_weight_matmul_matches_f32_on_dequantized() {
        let ctx = gpu().await;
        let mut rng = Rng::new(91);
        // Every variant: the 130-row case is aligned, so the vec4 ones read the packed words through
        // each format's weight_at4 there.
        for (v, variant) in variants_where(&ctx, |_| true) {
            // The variants differ in the tiled kernel only: the few-row cases (matvec) run once.
            let tiled_only = v != loratab::gpu::tune::DEFAULT;
            for format in WeightFormat::ALL {
                let mut cases = 0;
                for (m, n, k) in [(1, 96, 64), (7, 33, 128), (130, 64, 96)] {
                    if tiled_only && m <= 8 {
                        continue;
                    }
                    for layout in [Layout::XW, Layout::XWt] {
                        // The block runs along the stored rows: N for [K, N], K for [N, K]; a quantized
                        // format cannot store 33-wide rows, so it skips that one shape (5 cases, not 6).
                        let (rows, cols) = if layout == Layout::XW { (k, n) } else { (n, k) };
                        if format.is_quantized() && cols % 32 != 0 {
                            continue;
                        }
                        cases += 1;
                        let (w, dequantized) = packed(&ctx, &mut rng, rows, cols, format).await;
                        let wide = n + 5;
                        let spec = Matmul::new(m, n, k, layout).scaled(0.5, 1.0).into_block(wide, 0, 3);
                        let var = loratab::gpu::tune::VARIANTS[v];
                        assert!(!var.vec4 || m <= 8 || var.entry(&spec) == "main_vec4", "{variant}: {spec:?} is aligned");
                        let (a, bias, c0) = (rng.vec(spec.a_len()), rng.vec(spec.bias_offset + n), rng.vec(spec.c_len()));
                        let ta = ctx.upload(&a, &[a.len()]).await.unwrap();
                        let tbias = ctx.upload(&bias, &[bias.len()]).await.unwrap();
                        let tc = ctx.upload(&c0, &[c0.len()]).await.unwrap();
                        ctx.run(|enc| loratab::gpu::matmul::encode(&ctx, enc, &spec, &ta, &w, Some(&tbias), &tc)).await.unwrap();
                        let mut want = c0;
                        reference::matmul::matmul(&spec, &a, &dequantized, Some(&bias), &mut want);
                        let e = max_error(&ctx.read(&tc).await.unwrap(), &want);
                        assert!(e <= MATMUL_TOLERANCE, "{variant}: {format} {layout:?} m={m} n={n} k={k}: max error {e}");
                    }
                }
                assert_eq!(cases, if tiled_only { 2 } else if format.is_quantized() { 5 } else { 6 }, "{format}: cases run");
                if tiled_only {
                    continue;
                }
                // The LM head's backward reads A as a column block of the logits' gradient.
                let (v, d, rows) = (100, 64, 7);
                let (w, dequantized) = packed(&ctx, &mut rng, 60, d, format).await;
                let spec = Matmul::new(rows, d, 60, Layout::XW).from_block(v, 40);
                let a = rng.vec(rows * v);
                let ta = ctx.upload(&a, &[a.len()]).await.unwrap();
                let tc = ctx.zeros(&[rows * d]).await.unwrap();
                ctx.run(|enc| loratab::gpu::matmul::encode(&ctx, enc, &spec, &ta, &w, None, &tc)).await.unwrap();
                let mut want = vec![0.0; rows * d];
                reference::matmul::matmul(&spec, &a, &dequantized, None, &mut want);
                let e = max_error(&ctx.read(&tc).await.unwrap(), &want);
                assert!(e <= MATMUL_TOLERANCE, "{variant}: {format} from_block: max error {e}");
            }
        }
    }
}

gpu_test! {
    /// Only a weight operand may be packed: a compact A or C is refused with a sentence.
    async fn compact_tensors_are_refused_where_f32_is_needed() {
        let ctx = gpu().await;
        let mut rng = Rng::new(92);
        let (w, _) = packed(&ctx, &mut rng, 32, 32, WeightFormat::Q8_0).await;
        let f = ctx.upload(&rng.vec(32 * 32), &[32, 32]).await.unwrap();
        let spec = Matmul::new(32, 32, 32, Layout::XW);
        for (a, c) in [(&w, &f), (&f, &w)] {
            let err = ctx.run(|enc| loratab::gpu::matmul::encode(&ctx, enc, &spec, a, &f, None, c)).await.unwrap_err();
            assert!(err.to_string().contains("only a weight operand may be packed"), "{err}");
        }
    }
}

gpu_test! {
    /// The small-M kernel (shaders/matvec.wgsl, what a decode step runs) against the CPU reference on
    /// the dequantized weight: every weight format, M = 1..=8, both layouts a frozen weight is read in,
    /// 1 (4 columns a thread), 4 and 32 threads per column, N and K not multiples of a workgroup's 8, 64 or 256 columns,
    /// rows of B read four values at a time (K or N a multiple of 4) and one at a time (odd K or N), with bias, scale and accumulation into
    /// a column block, from a column block of A, batched with a shared weight, and with the grid
    /// spilling into y (a cap of 5 workgroups per dimension: X·Wᵀ's 17 groups of 8 columns for N = 131).
    async fn matvec_matches_reference_for_every_format() {
        use loratab::gpu::matmul::{encode_with, Kernel, Operands};
        use loratab::gpu::matvec;
        let ctx = gpu().await;
        ctx.set_max_workgroups_per_dim(5);
        let mut rng = Rng::new(93);
        let mut vec4_cases = 0;
        for format in WeightFormat::ALL {
            // Every row count for two formats; the others (their weight_at checked above) at two.
            let rows: Vec<usize> = if matches!(format, WeightFormat::F32 | WeightFormat::Q4_0) { (1..=matvec::MAX_ROWS).collect() } else { vec![1, 5] };
            for m in rows {
                for (l, (layout, aligned)) in [(Layout::XW, false), (Layout::XWt, false), (Layout::XW, true), (Layout::XWt, true)].into_iter().enumerate() {
                    // Quantized blocks run along the stored rows (N for [K, N], K for [N, K]): keep those
                    // whole. `aligned` puts a multiple of 4 along the rows of B (the four-at-a-time
                    // path, `main_vec4`), else an odd length (K = 45 or 37 along X·Wᵀ's rows, N = 131
                    // along X·W's), which takes the one-at-a-time path.
                    let (n, k) = match (layout, format.is_quantized(), aligned) {
                        (Layout::XW, true, _) => (160, 37),
                        (_, true, _) => (37, 96),
                        (Layout::XW, false, true) => (132, 45),
                        (_, false, true) => (131, 44),
                        _ => (131, 45),
                    };
                    if format.is_quantized() && !aligned {
                        continue;
                    }
                    let (rows, cols) = if layout == Layout::XW { (k, n) } else { (n, k) };
                    let (w, dequantized) = packed(&ctx, &mut rng, rows, cols, format).await;
                    let (lda, ldc) = (k + 3, n + 5);
                    let batch = if m == 2 { 2 } else { 1 };
                    let spec = Matmul::new(m, n, k, layout).from_block(lda, 2).scaled(0.5, 1.0).into_block(ldc, 1, 3).batched(batch, true);
                    assert!(matvec::fits(&spec));
                    let (a, bias, c0) = (rng.vec(spec.a_len()), rng.vec(spec.bias_offset + n), rng.vec(spec.c_len()));
                    let ta = ctx.upload(&a, &[a.len()]).await.unwrap();
                    let tbias = ctx.upload(&bias, &[bias.len()]).await.unwrap();
                    let plain = Matmul::new(m, n, k, layout);
                    // The splits in turn: a CPU device runs 1 lane per column, a GPU 4 (X·W) or 32 (X·Wᵀ).
                    // One row, aligned: 1 lane, the four-at-a-time path in both layouts for every format.
                    let lanes = if aligned && m == 1 { 1 } else { [1, 4, 32][(m + l) % 3] };
                    if lanes == 1 && matvec::aligned(&spec) {
                        vec4_cases += 1;
                    }
                    let tc = ctx.upload(&c0, &[c0.len()]).await.unwrap();
                    let ops = Operands { a: &ta, b: &w, bias: Some(&tbias), c: &tc };
                    ctx.run(|enc| encode_with(&ctx, enc, &spec, ops, Kernel::Matvec { lanes })).await.unwrap();
                    let mut want = c0.clone();
                    reference::matmul::matmul(&spec, &a, &dequantized, Some(&bias), &mut want);
                    let e = max_error(&ctx.read(&tc).await.unwrap(), &want);
                    assert!(e <= MATMUL_TOLERANCE, "{format} {layout:?} m={m} n={n} k={k} lanes={lanes}: max error {e}");

                    // Plain: no bias, beta = 0 (C's old values are never read).
                    let tc = ctx.upload(&vec![f32::NAN; plain.c_len()], &[plain.c_len()]).await.unwrap();
                    let ops = Operands { a: &ta, b: &w, bias: None, c: &tc };
                    ctx.run(|enc| encode_with(&ctx, enc, &plain, ops, Kernel::Matvec { lanes })).await.unwrap();
                    let mut want = vec![0.0; plain.c_len()];
                    reference::matmul::matmul(&plain, &a, &dequantized, None, &mut want);
                    let e = max_error(&ctx.read(&tc).await.unwrap(), &want);
                    assert!(e <= MATMUL_TOLERANCE, "{format} {layout:?} m={m} lanes={lanes} plain: max error {e}");
                }
            }
        }
        // Transposed A, or more rows than the kernel keeps, is refused (matmul takes those).
        let w = ctx.zeros(&[64]).await.unwrap();
        for spec in [Matmul::new(1, 8, 8, Layout::XtG), Matmul::new(9, 8, 8, Layout::XW)] {
            let ops = Operands { a: &w, b: &w, bias: None, c: &w };
            let err = ctx.run(|enc| encode_with(&ctx, enc, &spec, ops, Kernel::Matvec { lanes: 1 })).await.unwrap_err();
            assert!(err.to_string().contains("rows of a row-major A"), "{err}");
        }
        // Every format ran the four-at-a-time path (and f32, f16, bf16 the one-at-a-time one beside it).
        assert!(vec4_cases >= 2 * WeightFormat::ALL.len(), "{vec4_cases} cases on the four-at-a-time path");
    }
}

gpu_test! {
    /// Two products by two weights of one shape in one dispatch (shaders/matvec_pair.wgsl, a decode
    /// step's k and v on a CPU device) and its SwiGLU finish (entry glu: gate, up and silu_mul, the
    /// step's MLP) against the reference's two products (and silu_mul) on the dequantized weights:
    /// every weight format, 1..=8 rows, N neither a multiple of a workgroup's 128 columns nor of 4
    /// (the last thread's columns run past N) and spilling the grid into y (a cap of 2 workgroups
    /// per dimension), large gate values of both signs (silu's two forms). Shapes it does not take
    /// are refused with a sentence.
    async fn matvec_pair_matches_reference_for_every_format() {
        use loratab::gpu::matvec_pair;
        let ctx = gpu().await;
        ctx.set_max_workgroups_per_dim(2);
        let mut rng = Rng::new(94);
        for format in WeightFormat::ALL {
            let rows: Vec<usize> = if format == WeightFormat::F32 { (1..=matvec_pair::MAX_ROWS).collect() } else { vec![1, 3] };
            for m in rows {
                let (n, k) = (if m % 2 == 0 { 301 } else { 258 }, if m == 1 { 96 } else { 64 });
                let (g, gate) = packed(&ctx, &mut rng, n, k, format).await;
                let (u, up) = packed(&ctx, &mut rng, n, k, format).await;
                // x scaled up so that some gate sums pass ±20.
                let x: Vec<f32> = rng.vec(m * k).iter().map(|v| v * 8.0).collect();
                let tx = ctx.upload(&x, &[m, k]).await.unwrap();
                let out = ctx.upload(&vec![f32::NAN; m * n + 1], &[m * n + 1]).await.unwrap();
                ctx.run(|enc| matvec_pair::encode_glu(&ctx, enc, &tx, m, &g, &u, &out)).await.unwrap();
                let got = ctx.read(&out).await.unwrap();
                let want = reference::matvec_pair::matvec_glu(&x, &gate, &up, m, n, k);
                assert_eq!(got.len(), want.len() + 1);
                assert!(got[m * n].is_nan(), "{format} m={m}: nothing written past the output");
                // The error allowed per value follows its conditioning: with g, u the two sums and
                // S_g, S_u the sums of |x|·|w| (what their rounding scales with), silu(g)·u moves by
                // at most ~ε·(|silu(g)|·S_u + |u|·S_g) (silu' < 1.1); 1e-5 is ~170 ε. A wrong column,
                // weight or row, or a missing silu, is off by O(|value|).
                let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
                let (g_sum, u_sum) = reference::matvec_pair::matvec_pair(&x, &gate, &up, m, n, k);
                let (g_abs, u_abs) = reference::matvec_pair::matvec_pair(&abs(&x), &abs(&gate), &abs(&up), m, n, k);
                for i in 0..m * n {
                    let silu = reference::silu_mul::silu_one(g_sum[i]);
                    let allowed = 1e-5 * (silu.abs() * u_abs[i] + u_sum[i].abs() * g_abs[i]) + 1e-6;
                    let e = (got[i] - want[i]).abs();
                    assert!(e <= allowed, "{format} m={m} n={n} k={k}: value {i} is {}, the reference {} (error {e} > {allowed})", got[i], want[i]);
                }
                assert!(g_sum.iter().any(|&v| v > 20.0) && g_sum.iter().any(|&v| v < -20.0), "{format} m={m}: gate sums of both signs past 20");

                // Both products stored (entry main).
                let y_g = ctx.upload(&vec![f32::NAN; m * n + 1], &[m * n + 1]).await.unwrap();
                let y_u = ctx.upload(&vec![f32::NAN; m * n + 1], &[m * n + 1]).await.unwrap();
                ctx.run(|enc| matvec_pair::encode(&ctx, enc, &tx, m, &g, &u, &y_g, &y_u)).await.unwrap();
                for (what, got, want) in [("x·Gᵀ", ctx.read(&y_g).await.unwrap(), g_sum), ("x·Uᵀ", ctx.read(&y_u).await.unwrap(), u_sum)] {
                    assert!(got[m * n].is_nan(), "{format} m={m} {what}: nothing written past the output");
                    let e = max_error(&got[..m * n], &want);
                    assert!(e <= MATMUL_TOLERANCE, "{format} m={m} n={n} k={k} {what}: max error {e}");
                }
            }
        }
        ctx.set_max_workgroups_per_dim(u32::MAX);
        // Refused: K not a multiple of 4, 9 rows, a gate and an up in different formats.
        let mut rng = Rng::new(95);
        let (g, _) = packed(&ctx, &mut rng, 8, 6, WeightFormat::F32).await;
        let x = ctx.zeros(&[9 * 64]).await.unwrap();
        let out = ctx.zeros(&[9 * 64]).await.unwrap();
        let err = ctx.run(|enc| matvec_pair::encode_glu(&ctx, enc, &x, 1, &g, &g, &out)).await.unwrap_err();
        assert!(err.to_string().contains("multiple of 4"), "{err}");
        let (g, _) = packed(&ctx, &mut rng, 8, 64, WeightFormat::F32).await;
        let err = ctx.run(|enc| matvec_pair::encode_glu(&ctx, enc, &x, 9, &g, &g, &out)).await.unwrap_err();
        assert!(err.to_string().contains("1..=8 rows"), "{err}");
        let (u, _) = packed(&ctx, &mut rng, 8, 64, WeightFormat::F16).await;
        let err = ctx.run(|enc| matvec_pair::encode_glu(&ctx, enc, &x, 1, &g, &u, &out)).await.unwrap_err();
        assert!(err.to_string().contains("must match the first"), "{err}");
        let err = ctx.run(|enc| matvec_pair::encode(&ctx, enc, &x, 1, &g, &g, &out, &out)).await.unwrap_err();
        assert!(err.to_string().contains("different buffers"), "{err}");
    }
}

/// The residual stream and norm a fused decode kernel's prologue takes (stage_norm.wgsl): x [rows,
/// K], `parts` partial products [parts, rows, K] (one part allocated when 0), the norm's weight [K],
/// and S [rows · K] with a NaN sentinel after it.
struct NormCase {
    x: Vec<f32>,
    add: Vec<f32>,
    weight: Vec<f32>,
    gpu: [loratab::gpu::GpuTensor; 4],
    rows: usize,
    k: usize,
    parts: usize,
}

impl NormCase {
    async fn new(ctx: &loratab::gpu::GpuContext, rng: &mut Rng, rows: usize, k: usize, parts: usize) -> Self {
        let (x, add, weight) = (rng.vec(rows * k), rng.vec(parts.max(1) * rows * k), rng.vec(k));
        let gpu = [
            ctx.upload(&x, &[rows, k]).await.unwrap(),
            ctx.upload(&add, &[parts.max(1) * rows, k]).await.unwrap(),
            ctx.upload(&weight, &[k]).await.unwrap(),
            ctx.upload(&vec![f32::NAN; rows * k + 1], &[rows * k + 1]).await.unwrap(),
        ];
        Self { x, add, weight, gpu, rows, k, parts }
    }

    fn norm(&self, eps: f32) -> loratab::gpu::matvec_pair::Norm<'_> {
        let [x, add, weight, s] = &self.gpu;
        loratab::gpu::matvec_pair::Norm { x, add, parts: self.parts, weight, eps, s }
    }

    /// After the kernel ran: S = x + Σ parts exactly and nothing past it; returns the reference
    /// norm's output H [rows, K].
    async fn check_s(&self, ctx: &loratab::gpu::GpuContext, eps: f32, what: &str) -> Vec<f32> {
        let n = self.rows * self.k;
        let (want_s, h) = reference::residual_norm::residual_norm_parts(&self.x, &self.add[..self.parts * n], self.parts, &self.weight, None, self.k, eps);
        let got_s = ctx.read(&self.gpu[3]).await.unwrap();
        assert_eq!(got_s.len(), n + 1);
        assert_eq!(got_s[..n], want_s[..], "{what}: S = x + Σ add exactly");
        assert!(got_s[n].is_nan(), "{what}: nothing written past S");
        h
    }
}

gpu_test! {
    /// matvec_pair's entry `mlp` (a decode step's Llama MLP from its residual stream in one
    /// dispatch) against the reference chain residual_norm → matvec_glu → matmul X·Dᵀ, for every
    /// weight format: S = x + Σ add stored exactly, the partial products summed in order equal to the
    /// MLP's output, nothing written past either output (NaN sentinels), 1..=8 rows, K past one
    /// pass of the down loop (128 rows), a last workgroup of 32 columns and a grid padded in y
    /// (a cap of 2 workgroups per dimension); shapes it does not take refused with a sentence.
    async fn matvec_pair_mlp_matches_reference_for_every_format() {
        use loratab::gpu::matvec_pair::{self, Mlp, Norm};
        let ctx = gpu().await;
        ctx.set_max_workgroups_per_dim(2);
        let mut rng = Rng::new(97);
        let eps = 1e-5;
        for format in WeightFormat::ALL {
            let rows: Vec<usize> = if format == WeightFormat::F32 { (1..=matvec_pair::MAX_ROWS).collect() } else { vec![1, 3] };
            for m in rows {
                // (hidden N, model width K): N = 288 is 2¼ workgroups of 128 columns.
                let (n, k) = (288, if m == 1 { 160 } else { 64 });
                let (tg, gate) = packed(&ctx, &mut rng, n, k, format).await;
                let (tu, up) = packed(&ctx, &mut rng, n, k, format).await;
                let (td, down) = packed(&ctx, &mut rng, k, n, format).await;
                let w = Mlp { gate: &tg, up: &tu, down: &td };
                assert!(matvec_pair::fits_mlp(&ctx, m, &w), "{format} m={m}: fits");
                let case = NormCase::new(&ctx, &mut rng, m, k, 2).await;
                let parts = matvec_pair::mlp_parts(n);
                assert_eq!(parts, 3);
                let out = ctx.upload(&vec![f32::NAN; parts * m * k + 1], &[parts * m * k + 1]).await.unwrap();
                let norm = case.norm(eps);
                let mut got_parts = 0;
                ctx.run(|enc| {
                    got_parts = matvec_pair::encode_mlp(&ctx, enc, m, &norm, &w, &out)?;
                    Ok(())
                })
                .await
                .unwrap();
                assert_eq!(got_parts, parts);

                let h = case.check_s(&ctx, eps, &format!("{format} m={m}")).await;

                let f = reference::matvec_pair::matvec_glu(&h, &gate, &up, m, n, k);
                let mut want = vec![0.0; m * k];
                reference::matmul::matmul(&Matmul::new(m, k, n, Layout::XWt), &f, &down, None, &mut want);
                let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
                let mut scale = vec![0.0; m * k];
                reference::matmul::matmul(&Matmul::new(m, k, n, Layout::XWt), &abs(&f), &abs(&down), None, &mut scale);
                let got = ctx.read(&out).await.unwrap();
                assert_eq!(got.len(), parts * m * k + 1);
                assert!(got[parts * m * k].is_nan(), "{format} m={m}: nothing written past the parts");
                // Per value, the error allowed follows the sum's conditioning (Σ|f|·|d|): h and F
                // carry the norm's few-ε rounding into every term. A missed column group, a wrong
                // row of D or of F is off by O(|value|).
                for i in 0..m * k {
                    let sum = (0..parts).fold(0.0f32, |acc, g| acc + got[g * m * k + i]);
                    let allowed = 3e-5 * scale[i] + 1e-6;
                    let e = (sum - want[i]).abs();
                    assert!(e <= allowed, "{format} m={m} n={n} k={k}: output {i} is {sum}, the reference {} (error {e} > {allowed})", want[i]);
                }
            }
        }
        ctx.set_max_workgroups_per_dim(u32::MAX);
        // Refused: down not [K, N], N not a multiple of 4, more rows · K than staged, no parts to
        // add, an output too short for its parts.
        let mut rng = Rng::new(98);
        let (n, k) = (64, 64);
        let (g, _) = packed(&ctx, &mut rng, n, k, WeightFormat::F32).await;
        let (d, _) = packed(&ctx, &mut rng, k, n, WeightFormat::F32).await;
        let (d_wrong, _) = packed(&ctx, &mut rng, k, 2 * n, WeightFormat::F32).await;
        let (g_odd, _) = packed(&ctx, &mut rng, 62, k, WeightFormat::F32).await;
        let (d_odd, _) = packed(&ctx, &mut rng, k, 62, WeightFormat::F32).await;
        let (g_wide, _) = packed(&ctx, &mut rng, n, 384, WeightFormat::F32).await;
        let (d_wide, _) = packed(&ctx, &mut rng, 384, n, WeightFormat::F32).await;
        let buf = ctx.zeros(&[8 * 384 * 4]).await.unwrap();
        let norm = |parts| Norm { x: &buf, add: &buf, parts, weight: &buf, eps, s: &buf };
        let cases: [(Mlp, usize, usize, &str); 5] = [
            (Mlp { gate: &g, up: &g, down: &d_wrong }, 1, 1, "must be [64, 64]"),
            (Mlp { gate: &g_odd, up: &g_odd, down: &d_odd }, 1, 1, "a multiple of 4"),
            (Mlp { gate: &g_wide, up: &g_wide, down: &d_wide }, 8, 1, "at most 2944 values"),
            (Mlp { gate: &g, up: &g, down: &d }, 1, 0, "at least one part"),
            (Mlp { gate: &g, up: &g, down: &d }, 1, 1, "the output parts"),
        ];
        for (w, m, parts, want) in cases {
            if want != "at least one part" && want != "the output parts" {
                assert!(!matvec_pair::fits_mlp(&ctx, m, &w), "{want}: fits_mlp refuses it too");
            }
            let out = ctx.zeros(&[if want == "the output parts" { m * k - 1 } else { 8 * 384 }]).await.unwrap();
            let err = ctx.run(|enc| matvec_pair::encode_mlp(&ctx, enc, m, &norm(parts), &w, &out).map(|_| ())).await.unwrap_err();
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
        // Outputs that alias S or one of the norm's inputs: refused (the kernel would read what
        // another workgroup writes).
        let w = Mlp { gate: &g, up: &g, down: &d };
        let mut bufs = Vec::new();
        for len in [k, k, k, k, matvec_pair::mlp_parts(n) * k] {
            bufs.push(ctx.zeros(&[len.max(8 * 384)]).await.unwrap());
        }
        let [x, add, nw, s, out] = &bufs[..] else { unreachable!("five buffers") };
        for (out, want) in [(s, "different buffers"), (x, "must not be written by the same call"), (add, "must not be written by the same call")] {
            let norm = Norm { x, add, parts: 1, weight: nw, eps, s };
            let err = ctx.run(|enc| matvec_pair::encode_mlp(&ctx, enc, 1, &norm, &w, out).map(|_| ())).await.unwrap_err();
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
        let norm = Norm { x, add, parts: 1, weight: nw, eps, s };
        ctx.run(|enc| matvec_pair::encode_mlp(&ctx, enc, 1, &norm, &w, out).map(|_| ())).await.expect("distinct buffers are taken");
    }
}

/// matvec_qkv's outputs (NaN-filled before the call) against the reference's q, k, v for rows at
/// cache positions pos0..: q and the two caches' rows pos0.. within MATMUL_TOLERANCE, and nothing
/// else written (past q's rows, the caches' other rows).
async fn check_qkv(ctx: &loratab::gpu::GpuContext, what: &str, out: &loratab::gpu::matvec_qkv::Outputs<'_>, [want_q, want_k, want_v]: [Vec<f32>; 3], pos0: usize) {
    let got_q = ctx.read(out.q).await.unwrap();
    assert_eq!(got_q.len(), want_q.len() + 1, "{what}: q has one sentinel past its rows");
    assert!(got_q[want_q.len()].is_nan(), "{what}: nothing written past q");
    let e = max_error(&got_q[..want_q.len()], &want_q);
    assert!(e <= MATMUL_TOLERANCE, "{what}: q max error {e}");
    for (name, cache, want) in [("k", out.k_cache, want_k), ("v", out.v_cache, want_v)] {
        let nkv = cache.shape[1];
        let got = ctx.read(cache).await.unwrap();
        let (lo, hi) = (pos0 * nkv, pos0 * nkv + want.len());
        assert!(hi < got.len(), "{what}: the {name} cache has rows past the new ones");
        assert!(got[..lo].iter().chain(&got[hi..]).all(|v| v.is_nan()), "{what}: {name} cache rows outside the new ones written");
        let e = max_error(&got[lo..hi], &want);
        assert!(e <= MATMUL_TOLERANCE, "{what}: {name} max error {e}");
    }
}

gpu_test! {
    /// matvec_qkv (a decode step's q, k, v, RoPE and cache writes in one dispatch) against the
    /// reference products and rotation, for every weight format: q rotated at positions pos0..,
    /// k and v landing in cache rows pos0.. and no other row or value touched (NaN sentinels), heads
    /// whose pairs straddle workgroups (head_dim 10), GQA, a grid spilling into y; and refusals.
    async fn matvec_qkv_matches_reference_for_every_format() {
        use loratab::gpu::matvec_qkv::{self, Outputs, Weights};
        use loratab::reference::matvec_qkv::{matvec_qkv, Qkv};
        let ctx = gpu().await;
        ctx.set_max_workgroups_per_dim(2);
        let mut rng = Rng::new(96);
        let theta = 10000.0;
        for format in WeightFormat::ALL {
            let cases: Vec<(usize, usize, usize, usize)> = match format {
                // (rows, heads of q, heads of k/v, head_dim)
                WeightFormat::F32 => vec![(1, 14, 3, 10), (3, 14, 3, 10), (8, 4, 2, 64)],
                _ => vec![(1, 14, 3, 10), (2, 4, 2, 64)],
            };
            for (rows, hq, hkv, head_dim) in cases {
                let (nq, nkv, k, pos0) = (hq * head_dim, hkv * head_dim, 64, 5);
                let (wq, q_vals) = packed(&ctx, &mut rng, nq, k, format).await;
                let (wk, k_vals) = packed(&ctx, &mut rng, nkv, k, format).await;
                let (wv, v_vals) = packed(&ctx, &mut rng, nkv, k, format).await;
                let x = rng.vec(rows * k);
                let tx = ctx.upload(&x, &[rows, k]).await.unwrap();
                let positions = pos0 + rows + 2;
                let nan = |n: usize| vec![f32::NAN; n];
                let q = ctx.upload(&nan(rows * nq + 1), &[rows * nq + 1]).await.unwrap();
                let k_cache = ctx.upload(&nan(positions * nkv), &[positions, nkv]).await.unwrap();
                let v_cache = ctx.upload(&nan(positions * nkv), &[positions, nkv]).await.unwrap();
                let w = Weights { q: &wq, k: &wk, v: &wv };
                let out = Outputs { q: &q, k_cache: &k_cache, v_cache: &v_cache };
                ctx.run(|enc| matvec_qkv::encode(&ctx, enc, &tx, rows, &w, head_dim, pos0, theta, &out)).await.unwrap();
                let shape = Qkv { rows, nq, nkv, k, head_dim };
                let (want_q, want_k, want_v) = matvec_qkv(shape, &x, &q_vals, &k_vals, &v_vals, pos0, theta);
                check_qkv(&ctx, &format!("{format} {shape:?}"), &out, [want_q, want_k, want_v], pos0).await;
            }
        }
        ctx.set_max_workgroups_per_dim(u32::MAX);
        // Refused with a sentence: an odd head_dim, 9 rows, Wk in another format, one buffer for both
        // caches, a cache too short for the positions.
        let mut rng = Rng::new(97);
        let (wq, _) = packed(&ctx, &mut rng, 8, 64, WeightFormat::F32).await;
        let (wk, _) = packed(&ctx, &mut rng, 4, 64, WeightFormat::F32).await;
        let (wk16, _) = packed(&ctx, &mut rng, 4, 64, WeightFormat::F16).await;
        let x = ctx.zeros(&[9 * 64]).await.unwrap();
        let q = ctx.zeros(&[9 * 8]).await.unwrap();
        let (kc, vc) = (ctx.zeros(&[16, 4]).await.unwrap(), ctx.zeros(&[16, 4]).await.unwrap());
        for (rows, wk_, head_dim, pos0, same, needle) in [
            (1, &wk, 3, 0, false, "even head_dim"),
            (9, &wk, 4, 0, false, "1..=8"),
            (1, &wk16, 4, 0, false, "format"),
            (1, &wk, 4, 0, true, "different buffers"),
            (1, &wk, 4, 16, false, "the key cache"),
        ] {
            let w = Weights { q: &wq, k: wk_, v: wk_ };
            let out = Outputs { q: &q, k_cache: &kc, v_cache: if same { &kc } else { &vc } };
            let err = ctx.run(|enc| matvec_qkv::encode(&ctx, enc, &x, rows, &w, head_dim, pos0, 1e4, &out)).await.unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
        // 8 rows of heads of 130: 520 (cos, sin) pairs, past the uniform table's 512.
        let (wide, _) = packed(&ctx, &mut rng, 130, 64, WeightFormat::F32).await;
        let w = Weights { q: &wide, k: &wide, v: &wide };
        assert!(!matvec_qkv::fits(&ctx, 8, &w, 130) && (matvec_qkv::fits(&ctx, 7, &w, 130) == ctx.is_cpu()), "the RoPE table bounds rows · head_dim / 2");
        let out = Outputs { q: &q, k_cache: &kc, v_cache: &vc };
        let err = ctx.run(|enc| matvec_qkv::encode(&ctx, enc, &x, 8, &w, 130, 0, 1e4, &out)).await.unwrap_err();
        assert!(err.to_string().contains("the RoPE table holds at most 512"), "{err}");
    }
}

gpu_test! {
    /// matvec_qkv's `normed` entry (the block's input norm taken from the residual stream in the
    /// same dispatch) against the reference chain residual_norm → products → RoPE, for every
    /// weight format: S = x + Σ add stored exactly (x itself with no parts, as block 0 takes the
    /// embedding), q, k and v as from the norm's output, nothing written past S or q (NaN
    /// sentinels), 1..=8 rows, heads straddling workgroups, a grid padded in y; and refusals.
    async fn matvec_qkv_normed_matches_reference_for_every_format() {
        use loratab::gpu::matvec_pair::Norm;
        use loratab::gpu::matvec_qkv::{self, Outputs, Weights};
        use loratab::reference::matvec_qkv::{matvec_qkv, Qkv};
        let ctx = gpu().await;
        let storage = ctx.device.limits().max_storage_buffers_per_shader_stage;
        if storage < 10 {
            // Such a device runs the norm apart: fits_normed says no and encode_normed refuses
            // with a sentence (the kernel cannot be bound), so there is nothing to compare.
            let (w, _) = packed(&ctx, &mut Rng::new(1), 8, 64, WeightFormat::F32).await;
            let w = Weights { q: &w, k: &w, v: &w };
            assert!(!matvec_qkv::fits_normed(&ctx, 1, &w, 4), "fits_normed must refuse a device below 10 storage buffers");
            let mut bufs = Vec::new();
            for n in [64, 64, 64, 64, 8, 64, 64] {
                bufs.push(ctx.zeros(&[n]).await.unwrap());
            }
            let [x, add, nw, s, q, kc, vc] = &bufs[..] else { unreachable!("seven buffers") };
            let norm = Norm { x, add, parts: 1, weight: nw, eps: 1e-5, s };
            let out = Outputs { q, k_cache: kc, v_cache: vc };
            let err = ctx.run(|enc| matvec_qkv::encode_normed(&ctx, enc, &norm, 1, &w, 4, 0, 1e4, &out)).await.unwrap_err();
            assert!(err.to_string().contains("run the norm apart"), "{err}");
            eprintln!("matvec_qkv normed: {storage} storage buffers a stage, refused (the norm runs apart here); the comparison with the reference is skipped");
            return;
        }
        ctx.set_max_workgroups_per_dim(2);
        let mut rng = Rng::new(99);
        let (theta, eps) = (10000.0, 1e-5);
        for format in WeightFormat::ALL {
            let cases: Vec<(usize, usize, usize, usize, usize)> = match format {
                // (rows, heads of q, heads of k/v, head_dim, parts)
                WeightFormat::F32 => vec![(1, 14, 3, 10, 0), (3, 14, 3, 10, 2), (8, 4, 2, 64, 1)],
                _ => vec![(1, 14, 3, 10, 2), (2, 4, 2, 64, 0)],
            };
            for (rows, hq, hkv, head_dim, parts) in cases {
                let (nq, nkv, k, pos0) = (hq * head_dim, hkv * head_dim, 64, 5);
                let (wq, q_vals) = packed(&ctx, &mut rng, nq, k, format).await;
                let (wk, k_vals) = packed(&ctx, &mut rng, nkv, k, format).await;
                let (wv, v_vals) = packed(&ctx, &mut rng, nkv, k, format).await;
                let w = Weights { q: &wq, k: &wk, v: &wv };
                let what = format!("{format} rows={rows} heads {hq}/{hkv}×{head_dim} parts={parts}");
                assert!(matvec_qkv::fits_normed(&ctx, rows, &w, head_dim), "{what}: fits");
                let case = NormCase::new(&ctx, &mut rng, rows, k, parts).await;
                let nan = |n: usize| vec![f32::NAN; n];
                let positions = pos0 + rows + 2;
                let q = ctx.upload(&nan(rows * nq + 1), &[rows * nq + 1]).await.unwrap();
                let k_cache = ctx.upload(&nan(positions * nkv), &[positions, nkv]).await.unwrap();
                let v_cache = ctx.upload(&nan(positions * nkv), &[positions, nkv]).await.unwrap();
                let out = Outputs { q: &q, k_cache: &k_cache, v_cache: &v_cache };
                ctx.run(|enc| matvec_qkv::encode_normed(&ctx, enc, &case.norm(eps), rows, &w, head_dim, pos0, theta, &out)).await.unwrap();

                let h = case.check_s(&ctx, eps, &what).await;
                let (want_q, want_k, want_v) = matvec_qkv(Qkv { rows, nq, nkv, k, head_dim }, &h, &q_vals, &k_vals, &v_vals, pos0, theta);
                check_qkv(&ctx, &what, &out, [want_q, want_k, want_v], pos0).await;
            }
        }
        ctx.set_max_workgroups_per_dim(u32::MAX);
        // Refused with a sentence: more rows · K than staged, too few parts, S one of the inputs.
        let mut rng = Rng::new(100);
        let (wq, _) = packed(&ctx, &mut rng, 8, 512, WeightFormat::F32).await;
        let (wk, _) = packed(&ctx, &mut rng, 4, 512, WeightFormat::F32).await;
        let mut bufs = Vec::new();
        for n in [8 * 512, 512, 512, 8 * 512, 8 * 8, 16 * 4, 16 * 4] {
            bufs.push(ctx.zeros(&[n]).await.unwrap());
        }
        let [x, add, nw, s, q, kc, vc] = &bufs[..] else { unreachable!("seven buffers") };
        let w = Weights { q: &wq, k: &wk, v: &wk };
        assert!(!matvec_qkv::fits_normed(&ctx, 8, &w, 4), "8 rows of 512: fits_normed refuses them");
        let out = Outputs { q, k_cache: kc, v_cache: vc };
        for (rows, parts, same, needle) in [(8, 0, false, "at most 2048 values"), (1, 2, false, "the residual's parts"), (1, 0, true, "must not be written by the same call")] {
            let norm = Norm { x, add, parts, weight: nw, eps: 1e-5, s: if same { x } else { s } };
            let err = ctx.run(|enc| matvec_qkv::encode_normed(&ctx, enc, &norm, rows, &w, 4, 0, 1e4, &out)).await.unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }
}

gpu_test! {
    /// matvec_qkv's `head` (a decode step's last residual, final norm and LM head in one dispatch)
    /// against reference residual_norm_parts then the reference X·Wᵀ, for every weight format: S
    /// exactly, the logits of a column block of a wider output (a vocabulary split across buffers)
    /// and nothing else written (NaN sentinels), more column blocks than workgroups (each walks
    /// several), a grid spilling into y; and refusals.
    async fn matvec_qkv_head_matches_reference_for_every_format() {
        use loratab::gpu::matvec_pair::Norm;
        use loratab::gpu::matvec_qkv;
        let ctx = gpu().await;
        ctx.set_max_workgroups_per_dim(2);
        let mut rng = Rng::new(102);
        let eps = 1e-5;
        for format in WeightFormat::ALL {
            let cases: Vec<(usize, usize, usize, usize, usize, usize)> = match format {
                // (rows, columns N, K, parts, first column, row pitch)
                WeightFormat::F32 => vec![(1, 300, 64, 0, 0, 300), (1, 4100, 32, 6, 0, 4100), (3, 200, 64, 2, 37, 300)],
                _ => vec![(1, 4200, 32, 2, 5, 4210)],
            };
            for (rows, n, k, parts, col0, ldc) in cases {
                let what = format!("{format} rows={rows} N={n} K={k} parts={parts} columns {col0}.. of {ldc}");
                let (w, w_vals) = packed(&ctx, &mut rng, n, k, format).await;
                assert!(matvec_qkv::fits_head(&ctx, rows, &w) == ctx.is_cpu(), "{what}: fits on a CPU device only");
                let case = NormCase::new(&ctx, &mut rng, rows, k, parts).await;
                let nan = |n: usize| vec![f32::NAN; n];
                let logits = ctx.upload(&nan(rows * ldc + 1), &[rows * ldc + 1]).await.unwrap();
                ctx.run(|enc| matvec_qkv::encode_head(&ctx, enc, &case.norm(eps), rows, &w, &logits, col0, ldc)).await.unwrap();

                let h = case.check_s(&ctx, eps, &what).await;
                let mut want = nan(rows * ldc + 1);
                let spec = Matmul::new(rows, n, k, Layout::XWt).into_block(ldc, 0, col0);
                reference::matmul::matmul(&spec, &h, &w_vals, None, &mut want);
                let got = ctx.read(&logits).await.unwrap();
                assert_eq!(got.len(), want.len());
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    let inside = i < rows * ldc && (col0..col0 + n).contains(&(i % ldc));
                    match inside {
                        true => assert!((g - e).abs() <= MATMUL_TOLERANCE * e.abs().max(1.0), "{what}: logit {i} is {g}, want {e}"),
                        false => assert!(g.is_nan(), "{what}: value {i} outside the column block written ({g})"),
                    }
                }
            }
        }
        ctx.set_max_workgroups_per_dim(u32::MAX);
        // Refused with a sentence: K not a multiple of 4, a block past the row, too few parts, the
        // logits one of the norm's inputs.
        let (w, _) = packed(&ctx, &mut rng, 8, 64, WeightFormat::F32).await;
        let (w6, _) = packed(&ctx, &mut rng, 8, 6, WeightFormat::F32).await;
        let mut bufs = Vec::new();
        for n in [64, 64, 64, 64, 16] {
            bufs.push(ctx.zeros(&[n]).await.unwrap());
        }
        let [x, add, nw, s, logits] = &bufs[..] else { unreachable!("five buffers") };
        for (weight, parts, col0, out, needle) in [
            (&w6, 0, 0, logits, "a multiple of 4 values"),
            (&w, 0, 9, logits, "do not fit its rows of 16"),
            (&w, 2, 0, logits, "the residual's parts"),
            (&w, 0, 0, x, "must not be written by the same call"),
        ] {
            let norm = Norm { x, add, parts, weight: nw, eps, s };
            let err = ctx.run(|enc| matvec_qkv::encode_head(&ctx, enc, &norm, 1, weight, out, col0, 16)).await.unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }
}

gpu_test! {
    /// attention's `decode_o` (a decode step's attention and output projection o in one dispatch)
    /// against reference attention then, per key/value head h', its group's columns of Wo: the Hkv
    /// partial products, for every weight format; out and lse as `decode` writes them; grouped and
    /// plain heads, D past one pass of the rows loop (4 · 32 rows) and not a multiple of it, 1 and
    /// 3 tokens after a cache; nothing written past the parts (NaN sentinel); and refusals.
    async fn attention_decode_o_matches_reference_for_every_format() {
        use loratab::gpu::attention::{self, OutProj};
        use loratab::reference::attention::Heads;
        let ctx = gpu().await;
        let mut rng = Rng::new(101);
        for format in WeightFormat::ALL {
            // (query heads, key/value heads, head_dim, D, tokens, past)
            let cases: Vec<(usize, usize, usize, usize, usize, usize)> = match format {
                WeightFormat::F32 => vec![(4, 2, 16, 136, 1, 6), (3, 3, 8, 40, 3, 2), (4, 1, 32, 264, 1, 0)],
                _ => vec![(4, 2, 16, 136, 2, 3)],
            };
            for (hq, hkv, dh, d, tokens, past) in cases {
                let heads = Heads { q_heads: hq, kv_heads: hkv, head_dim: dh };
                let what = format!("{format} Hq={hq} Hkv={hkv} Dh={dh} D={d} tokens={tokens} past={past}");
                assert!(attention::decode_fits(tokens, past, &heads), "{what}: decode fits");
                let (qd, kvd, seq) = (hq * dh, hkv * dh, past + tokens);
                let q: Vec<f32> = rng.vec(tokens * qd).iter().map(|v| v * 4.0).collect();
                let (k, v) = (rng.vec(seq * kvd), rng.vec(seq * kvd));
                let (two, wo_vals) = packed(&ctx, &mut rng, d, qd, format).await;
                let (tq, tk, tv) = (ctx.upload(&q, &[tokens, qd]).await.unwrap(), ctx.upload(&k, &[seq, kvd]).await.unwrap(), ctx.upload(&v, &[seq, kvd]).await.unwrap());
                let out = ctx.zeros(&[tokens, qd]).await.unwrap();
                let lse = ctx.zeros(&[attention::lse_len(tokens, &heads)]).await.unwrap();
                let n = hkv * tokens * d;
                let proj = ctx.upload(&vec![f32::NAN; n + 1], &[n + 1]).await.unwrap();
                let mut parts = 0;
                ctx.run(|enc| {
                    parts = attention::encode_o(&ctx, enc, [&tq, &tk, &tv, &out, &lse], &OutProj { wo: &two, proj: &proj }, tokens, past, &heads)?;
                    Ok(())
                })
                .await
                .unwrap();
                assert_eq!(parts, hkv, "{what}: one partial product per key/value head");

                let att = reference::attention::attention(&q, &k, &v, past, &heads);
                let e = max_error(&ctx.read(&out).await.unwrap(), &att);
                assert!(e <= 1e-5, "{what}: out max error {e}");
                let e = max_error(&ctx.read(&lse).await.unwrap(), &reference::attention::attention_lse(&q, &k, past, &heads));
                assert!(e <= 1e-5, "{what}: lse max error {e}");
                let got = ctx.read(&proj).await.unwrap();
                assert_eq!(got.len(), n + 1);
                assert!(got[n].is_nan(), "{what}: nothing written past the parts");
                // Part h' = att's group-h' columns · Wo's group-h' columns, by the reference matmul.
                let cols = qd / hkv;
                for h in 0..hkv {
                    let a: Vec<f32> = (0..tokens).flat_map(|t| att[t * qd + h * cols..t * qd + (h + 1) * cols].to_vec()).collect();
                    let w: Vec<f32> = (0..d).flat_map(|r| wo_vals[r * qd + h * cols..r * qd + (h + 1) * cols].to_vec()).collect();
                    let mut want = vec![0.0; tokens * d];
                    reference::matmul::matmul(&Matmul::new(tokens, d, cols, Layout::XWt), &a, &w, None, &mut want);
                    let e = max_error(&got[h * tokens * d..(h + 1) * tokens * d], &want);
                    assert!(e <= MATMUL_TOLERANCE, "{what}: part {h} max error {e}");
                }
            }
        }
        // Refused with a sentence: Wo not [D, Hq·Dh], parts too short, a case decode does not fit.
        let heads = Heads { q_heads: 2, kv_heads: 1, head_dim: 8 };
        let mut rng = Rng::new(102);
        let (wo, _) = packed(&ctx, &mut rng, 8, 16, WeightFormat::F32).await;
        let (wo_wide, _) = packed(&ctx, &mut rng, 8, 32, WeightFormat::F32).await;
        let mut bufs = Vec::new();
        for n in [16 * 3000, 8 * 3000, 8 * 3000, 16 * 3000, 2 * 3000, 8 * 3000, 7] {
            bufs.push(ctx.zeros(&[n]).await.unwrap());
        }
        let [q, k, v, out, lse, proj, short] = &bufs[..] else { unreachable!("seven buffers") };
        for (w, p, tokens, past, needle) in [(&wo_wide, proj, 1, 0, "must be [D, 16]"), (&wo, short, 1, 0, "o's partial products"), (&wo, proj, 1, 2999, "do not fit the decode kernel")] {
            let err = ctx.run(|enc| attention::encode_o(&ctx, enc, [q, k, v, out, lse], &OutProj { wo: w, proj: p }, tokens, past, &heads).map(|_| ())).await.unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }
}

gpu_test! {
    /// topk (generation's token choice) ranks as the CPU sampler does: greedy's first maximum under
    /// `>`, and top-k's stable sort under `total_cmp`, on values with repeats (ties broken by id),
    /// -0.0 beside 0.0, over lengths not a multiple of the 256 threads.
    async fn topk_ranks_like_the_cpu_sampler() {
        use loratab::gpu::topk::{self, Order};
        let ctx = gpu().await;
        let mut rng = Rng::new(94);
        for n in [1, 70, 1000, 4099] {
            // Few distinct values, so that ties are common; zeros of both signs.
            let mut values: Vec<f32> = (0..n).map(|_| (rng.uniform(-4.0, 4.0)).round() / 2.0).collect();
            for i in (0..n).step_by(7) {
                values[i] = if i % 2 == 0 { 0.0 } else { -0.0 };
            }
            let logits = ctx.upload(&values, &[n]).await.unwrap();
            let out = ctx.zeros(&[2 * topk::MAX_K]).await.unwrap();
            for (k, order) in [(1, Order::Greedy), (1, Order::Total), (5, Order::Total), (64, Order::Total)] {
                let k = k.min(n);
                ctx.run(|enc| topk::encode(&ctx, enc, &logits, n, k, order, &out)).await.unwrap();
                let got = ctx.read_u32(&out).await.unwrap();
                let mut want: Vec<u32> = (0..n as u32).collect();
                match order {
                    Order::Greedy => want = vec![loratab::generate::sample(&values, &loratab::generate::Sampling { temperature: 0.0, top_k: 0, seed: 0 }, &mut Rng::new(0))],
                    Order::Total => want.sort_by(|&a, &b| values[b as usize].total_cmp(&values[a as usize])),
                }
                want.truncate(k);
                let want_bits: Vec<u32> = want.iter().map(|&i| values[i as usize].to_bits()).collect();
                assert_eq!(&got[..k], &want[..], "n={n} k={k} {order:?}: ids");
                assert_eq!(&got[k..2 * k], &want_bits[..], "n={n} k={k} {order:?}: values");
            }
        }
    }
}

/// Tuning (`gpu::tune`): a product of a new shape class runs (correctly, with the default
/// variant), then every variant is timed; the one kept is correct and measured no slower than the
/// default; the choice is stored per device and a new context reads it back without timing
/// again; an unreadable store is ignored (a warning), never an error. Native: the store is a file
/// under `LORATAB_CACHE_DIR`.
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn matmul_tuning_picks_a_measured_variant_and_stores_it() {
    use loratab::gpu::tune::{class, store_path, DEFAULT, VARIANTS};
    use loratab::model::WeightFormat;
    let dir = std::env::temp_dir().join(format!("loratab-tune-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Only this test tunes, so only it reads the variable.
    std::env::set_var("LORATAB_CACHE_DIR", &dir);
    let file = store_path().unwrap();
    assert!(file.starts_with(&dir));
    std::fs::write(&file, "{ this is not json").unwrap();
    pollster::block_on(async {
        let ctx = gpu().await;
        ctx.set_tuning(true);
        let spec = Matmul::new(70, 130, 48, Layout::XWt);
        let e = check_matmul(&ctx, &spec, false, 3).await.unwrap();
        assert!(e <= MATMUL_TOLERANCE, "tuned run: max error {e}");
        let tuned = ctx.tuned();
        assert_eq!(tuned.len(), 1, "{tuned:?}");
        let t = &tuned[0];
        assert_eq!(t.class, class(&spec, WeightFormat::F32));
        assert_eq!(t.gflops.len(), VARIANTS.len());
        let default = t.gflops[DEFAULT].expect("the default is always timed");
        let chosen = t.gflops[t.chosen].expect("the choice is a correct variant");
        assert!(default > 0.0 && chosen >= default, "{t:?}");
        assert_eq!(ctx.matmul_variant(&spec, WeightFormat::F32), t.chosen);
        // The same class runs the choice now, still matching the CPU reference.
        let e = check_matmul(&ctx, &Matmul::new(65, 129, 40, Layout::XWt), false, 4).await.unwrap();
        assert!(e <= MATMUL_TOLERANCE, "with {}: max error {e}", VARIANTS[t.chosen].name);
        assert_eq!(ctx.tuned().len(), 1, "the same class is not timed twice");
        let stored = std::fs::read_to_string(&file).unwrap();
        assert!(stored.contains(&t.class) && stored.contains(VARIANTS[t.chosen].name), "{stored}");

        let again = gpu().await;
        again.set_tuning(true);
        assert_eq!(again.matmul_variant(&spec, WeightFormat::F32), t.chosen);
        let e = check_matmul(&again, &spec, false, 5).await.unwrap();
        assert!(e <= MATMUL_TOLERANCE, "max error {e}");
        assert!(again.tuned().is_empty(), "read from the store, not timed");
    });
    std::fs::remove_dir_all(&dir).unwrap();
}
