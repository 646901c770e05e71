//! The forward ops of the transformer (embedding, norms, activations, RoPE, attention, cross-entropy)
//! on the GPU against their CPU references, on odd shapes: rows 1, 7, 33; dims from 1 to 8192 (a row
//! kernel's 256 threads must stride); grouped-query attention with and without a KV cache.

mod common;
use common::gpu;

use loratab::gpu::{self as ops, GpuContext, GpuError, GpuTensor};
use loratab::reference;
use loratab::reference::attention::Heads;
use loratab::rng::Rng;
use loratab::selftest::max_error;

/// Relative tolerance (|g − r| / max(1, |r|)) of the reductions and transcendental functions.
const TOL: f32 = 1e-5;

/// Against the f32 reference over rows of `n` values. The reference sums a row sequentially in f32,
/// whose own error grows with n (≈1e-5 at 8192 values, 1.5e-5 at 150 000, where the GPU's tree
/// reduction is exact to 2e-7 against f64): beyond ~1000 values the tolerance grows with n, and the
/// GPU is also held to `F64_TOL` against an f64 computation of the same formula.
fn sum_tolerance(n: usize) -> f32 {
    TOL * (n as f32 / 1030.0).sqrt().max(1.0)
}

/// Against the same formula in f64, rounded to f32.
const F64_TOL: f32 = 2e-6;

fn layernorm_f64(x: &[f32], weight: &[f32], bias: &[f32], dim: usize, eps: f64) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for (xr, yr) in x.chunks(dim).zip(y.chunks_mut(dim)) {
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
        for i in 0..dim {
            yr[i] = ((xr[i] as f64 - mean) / (var + eps).sqrt() * weight[i] as f64 + bias[i] as f64) as f32;
        }
    }
    y
}

fn cross_entropy_f64(logits: &[f32], vocab: usize, targets: &[u32]) -> Vec<f32> {
    logits
        .chunks(vocab)
        .zip(targets)
        .map(|(row, &t)| {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            (max + sum.ln() - row[t as usize] as f64) as f32
        })
        .collect()
}

fn random_ids(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

/// Run one recording and surface its error.
async fn run(
    ctx: &GpuContext,
    record: impl FnOnce(&mut loratab::gpu::Recorder) -> Result<(), GpuError>,
) {
    ctx.run(record).await.unwrap();
}

async fn upload(ctx: &GpuContext, data: &[f32]) -> GpuTensor {
    ctx.upload(data, &[data.len()]).await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// recording: consecutive dispatches share one compute pass

gpu_test! {
    /// Each dispatch reads what the one before it wrote, inside one pass (the chain c = a + b,
    /// d = c + a, e = d + c must see every write), and a buffer copy splits the pass in two.
    async fn dispatches_share_one_pass_and_see_each_others_writes() {
        let ctx = gpu().await;
        let mut rng = Rng::new(5);
        let n = 70_000; // more than one workgroup row of the 1-D grid
        let (a, b) = (rng.vec(n), rng.vec(n));
        let c = reference::add::add(&a, &b);
        let d = reference::add::add(&c, &a);
        let e = reference::add::add(&d, &c);
        let (ag, bg) = (upload(&ctx, &a).await, upload(&ctx, &b).await);
        let (cg, dg, eg, copy) = (ctx.zeros(&[n]).await.unwrap(), ctx.zeros(&[n]).await.unwrap(),
                                  ctx.zeros(&[n]).await.unwrap(), ctx.zeros(&[n]).await.unwrap());
        let mut passes = 0;
        run(&ctx, |enc| {
            ops::add::encode(&ctx, enc, &ag, &bg, &cg)?;
            ops::add::encode(&ctx, enc, &cg, &ag, &dg)?;
            ops::add::encode(&ctx, enc, &dg, &cg, &eg)?;
            passes = enc.passes();
            Ok(())
        })
        .await;
        assert_eq!(passes, 1, "three dispatches, one pass");
        assert_eq!(ctx.read(&eg).await.unwrap(), e);

        // add, copy, add: the copy ends the pass, the second add opens another and reads the copy.
        run(&ctx, |enc| {
            ops::add::encode(&ctx, enc, &ag, &ag, &cg)?;
            enc.copy_buffer_to_buffer(&cg.buffer, 0, &copy.buffer, 0, 4 * n as u64);
            ops::add::encode(&ctx, enc, &copy, &bg, &dg)?;
            passes = enc.passes();
            Ok(())
        })
        .await;
        assert_eq!(passes, 2);
        assert_eq!(ctx.read(&dg).await.unwrap(), reference::add::add(&reference::add::add(&a, &a), &b));
    }
}

// ---------------------------------------------------------------------------------------------
// embedding

gpu_test! {
    async fn embedding_single_table_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(10);
        let vocab = 300;
        for dim in [1, 7, 36, 130] {
            for tokens in [1, 7, 33] {
                for accumulate in [false, true] {
                    let table = rng.vec(vocab * dim);
                    let mut ids = random_ids(&mut rng, tokens, vocab);
                    ids[0] = (vocab - 1) as u32; // the last row too
                    let start = rng.vec(tokens * dim);
                    let mut want = start.clone();
                    reference::embedding::embedding(&table, dim, &ids, &mut want, accumulate);

                    let t = ctx.upload(&table, &[vocab, dim]).await.unwrap();
                    let i = ctx.upload_u32(&ids, &[tokens]).await.unwrap();
                    let o = ctx.upload(&start, &[tokens, dim]).await.unwrap();
                    run(&ctx, |enc| ops::embedding::encode(&ctx, enc, &t, dim, 0, &i, &o, accumulate)).await;
                    let got = ctx.read(&o).await.unwrap();
                    // A copy (or one addition, the same as the reference's): exact.
                    assert_eq!(got, want, "dim={dim} tokens={tokens} accumulate={accumulate}");
                }
            }
        }
    }
}

gpu_test! {
    /// A vocabulary split in parts (as large embeddings are, to fit the per-binding limit): each
    /// part writes only its own tokens, and together they equal the whole table.
    async fn embedding_split_table_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(11);
        let vocab = 300;
        for (dim, parts) in [(7, vec![0, 100, 250, 300]), (130, vec![0, 150, 300]), (36, vec![0, 1, 300])] {
            for accumulate in [false, true] {
                let tokens = 33;
                let table = rng.vec(vocab * dim);
                let mut ids = random_ids(&mut rng, tokens, vocab);
                // Both edges of every part.
                for (j, &b) in parts.iter().enumerate() {
                    ids[2 * j] = b.min(vocab - 1) as u32;
                    ids[2 * j + 1] = b.saturating_sub(1) as u32;
                }
                let start = rng.vec(tokens * dim);
                let mut want = start.clone();
                reference::embedding::embedding(&table, dim, &ids, &mut want, accumulate);

                let mut pieces = Vec::new();
                for w in parts.windows(2) {
                    let (r0, r1) = (w[0], w[1]);
                    let t = ctx.upload(&table[r0 * dim..r1 * dim], &[r1 - r0, dim]).await.unwrap();
                    pieces.push((r0, t));
                }
                let i = ctx.upload_u32(&ids, &[tokens]).await.unwrap();
                let o = ctx.upload(&start, &[tokens, dim]).await.unwrap();
                run(&ctx, |enc| {
                    for (row0, t) in &pieces {
                        ops::embedding::encode(&ctx, enc, t, dim, *row0, &i, &o, accumulate)?;
                    }
                    Ok(())
                })
                .await;
                let got = ctx.read(&o).await.unwrap();
                assert_eq!(got, want, "dim={dim} parts={parts:?} accumulate={accumulate}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// layernorm, rmsnorm

const ROWS: [usize; 3] = [1, 7, 33];
const DIMS: [usize; 6] = [1, 7, 36, 130, 300, 1030];

fn norm_shapes() -> Vec<(usize, usize)> {
    let mut shapes: Vec<(usize, usize)> =
        ROWS.iter().flat_map(|&r| DIMS.iter().map(move |&d| (r, d))).collect();
    shapes.push((2, 8192)); // the largest hidden size the models use: 32 values per thread
    shapes
}

gpu_test! {
    async fn layernorm_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(20);
        let (mut worst, mut worst64) = (0.0f32, 0.0f32);
        for (rows, dim) in norm_shapes() {
            // A common offset of 3 per row: the two-pass variance must not lose it.
            let x: Vec<f32> = rng.vec(rows * dim).iter().map(|v| v + 3.0).collect();
            let (weight, bias) = (rng.vec(dim), rng.vec(dim));
            let want = reference::layernorm::layernorm(&x, &weight, &bias, dim, 1e-5);

            let (xg, wg) = (upload(&ctx, &x).await, upload(&ctx, &weight).await);
            let bg = upload(&ctx, &bias).await;
            let out = ctx.zeros(&[rows, dim]).await.unwrap();
            run(&ctx, |enc| ops::layernorm::encode(&ctx, enc, &xg, &wg, &bg, &out, rows, dim, 1e-5)).await;
            let got = ctx.read(&out).await.unwrap();
            let e = max_error(&got, &want);
            let e64 = max_error(&got, &layernorm_f64(&x, &weight, &bias, dim, 1e-5));
            assert!(e <= sum_tolerance(dim), "rows={rows} dim={dim}: max error {e}");
            assert!(e64 <= F64_TOL, "rows={rows} dim={dim}: max error {e64} against f64");
            worst = worst.max(e);
            worst64 = worst64.max(e64);
        }
        eprintln!("layernorm: max error {worst:e} (against f64: {worst64:e})");
    }
}

gpu_test! {
    async fn rmsnorm_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(21);
        let mut worst = 0.0f32;
        for (rows, dim) in norm_shapes() {
            let x = rng.vec(rows * dim);
            let weight = rng.vec(dim);
            let want = reference::rmsnorm::rmsnorm(&x, &weight, dim, 1e-6);

            let (xg, wg) = (upload(&ctx, &x).await, upload(&ctx, &weight).await);
            let out = ctx.zeros(&[rows, dim]).await.unwrap();
            run(&ctx, |enc| ops::rmsnorm::encode(&ctx, enc, &xg, &wg, &out, rows, dim, 1e-6)).await;
            let e = max_error(&ctx.read(&out).await.unwrap(), &want);
            assert!(e <= TOL, "rows={rows} dim={dim}: max error {e}");
            worst = worst.max(e);
        }
        eprintln!("rmsnorm: max error {worst:e}");
    }
}

gpu_test! {
    /// The fused residual add + norm equals the add followed by the norm (both flavours), and s
    /// holds the sum.
    async fn residual_norm_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(22);
        let mut worst = 0.0f32;
        for (rows, dim) in norm_shapes() {
            let x: Vec<f32> = rng.vec(rows * dim).iter().map(|v| v + 3.0).collect();
            let branch = rng.vec(rows * dim);
            let (weight, bias) = (rng.vec(dim), rng.vec(dim));
            let (xg, bg) = (upload(&ctx, &x).await, upload(&ctx, &branch).await);
            let (wg, biasg) = (upload(&ctx, &weight).await, upload(&ctx, &bias).await);
            for layer in [true, false] {
                let bias_ref = layer.then_some(bias.as_slice());
                let (want_s, want_y) = reference::residual_norm::residual_norm(&x, &branch, &weight, bias_ref, dim, 1e-5);
                let s = ctx.zeros(&[rows, dim]).await.unwrap();
                let y = ctx.zeros(&[rows, dim]).await.unwrap();
                let bias_gpu = layer.then_some(&biasg);
                run(&ctx, |enc| ops::residual_norm::encode(&ctx, enc, &xg, &bg, &wg, bias_gpu, &s, &y, rows, dim, 1e-5)).await;
                assert_eq!(ctx.read(&s).await.unwrap(), want_s, "rows={rows} dim={dim}: s = a + b exactly");
                let e = max_error(&ctx.read(&y).await.unwrap(), &want_y);
                let tol = if layer { sum_tolerance(dim) } else { TOL };
                assert!(e <= tol, "rows={rows} dim={dim} layernorm={layer}: max error {e}");
                worst = worst.max(e);
            }
        }
        eprintln!("residual_norm: max error {worst:e}");
        // b as three partial products (a decode step's MLP output from matvec_pair's `mlp`).
        for (rows, dim) in [(1, 256), (3, 70)] {
            let x = rng.vec(rows * dim);
            let parts = rng.vec(3 * rows * dim);
            let weight = rng.vec(dim);
            let (want_s, want_y) = reference::residual_norm::residual_norm_parts(&x, &parts, 3, &weight, None, dim, 1e-5);
            let (xg, pg, wg) = (upload(&ctx, &x).await, upload(&ctx, &parts).await, upload(&ctx, &weight).await);
            let s = ctx.zeros(&[rows, dim]).await.unwrap();
            let y = ctx.zeros(&[rows, dim]).await.unwrap();
            run(&ctx, |enc| ops::residual_norm::encode_parts(&ctx, enc, &xg, &pg, 3, &wg, None, &s, &y, rows, dim, 1e-5)).await;
            assert_eq!(ctx.read(&s).await.unwrap(), want_s, "rows={rows} dim={dim}: s = a + b_0 + b_1 + b_2 exactly, in order");
            let e = max_error(&ctx.read(&y).await.unwrap(), &want_y);
            assert!(e <= TOL, "rows={rows} dim={dim} three parts: max error {e}");
        }
    }
}

gpu_test! {
    /// More rows than one grid row of workgroups holds: every row kernel (layernorm, rmsnorm,
    /// residual_norm, cross_entropy, attention's (token, head) pairs) spills into y and must rebuild its row. The
    /// launchers' grid cap is lowered to 3 workgroups per dimension, so 14 rows make a 3 × 5 grid (the
    /// last row partly idle) on any device, and cheaply enough for the browser too.
    async fn row_kernels_beyond_one_grid_row() {
        let ctx = gpu().await;
        ctx.set_max_workgroups_per_dim(3);
        let (rows, dim) = (14, 2);
        let mut rng = Rng::new(22);
        let x = rng.vec(rows * dim);
        let (weight, bias) = (rng.vec(dim), rng.vec(dim));
        let (xg, wg, bg) = (upload(&ctx, &x).await, upload(&ctx, &weight).await, upload(&ctx, &bias).await);
        let (o1, o2) = (ctx.zeros(&[rows, dim]).await.unwrap(), ctx.zeros(&[rows, dim]).await.unwrap());
        // Cross-entropy over the same values as [rows, 2] logits.
        let targets = random_ids(&mut rng, rows, dim);
        let tg = ctx.upload_u32(&targets, &[rows]).await.unwrap();
        let losses = ctx.zeros(&[rows]).await.unwrap();
        // Attention with one query head per row: Dh = 1, one cached key and the new one.
        let heads = Heads { q_heads: rows, kv_heads: 1, head_dim: 1 };
        let (q, k, v) = (rng.vec(rows), rng.vec(2), rng.vec(2));
        let (qg, kg, vg) = (upload(&ctx, &q).await, upload(&ctx, &k).await, upload(&ctx, &v).await);
        let att = ctx.zeros(&[rows]).await.unwrap();
        let lse = ctx.zeros(&[ops::attention::lse_len(1, &heads)]).await.unwrap();
        // residual_norm (layernorm flavour) of x + branch.
        let branch = rng.vec(rows * dim);
        let brg = upload(&ctx, &branch).await;
        let (rs, ry) = (ctx.zeros(&[rows, dim]).await.unwrap(), ctx.zeros(&[rows, dim]).await.unwrap());
        run(&ctx, |enc| {
            ops::residual_norm::encode(&ctx, enc, &xg, &brg, &wg, Some(&bg), &rs, &ry, rows, dim, 1e-5)?;
            ops::layernorm::encode(&ctx, enc, &xg, &wg, &bg, &o1, rows, dim, 1e-5)?;
            ops::rmsnorm::encode(&ctx, enc, &xg, &wg, &o2, rows, dim, 1e-6)?;
            ops::cross_entropy::encode(&ctx, enc, &xg, &tg, &losses, rows, dim)?;
            ops::attention::encode(&ctx, enc, &qg, &kg, &vg, &att, &lse, 1, 1, &heads)
        })
        .await;
        let want1 = reference::layernorm::layernorm(&x, &weight, &bias, dim, 1e-5);
        let want2 = reference::rmsnorm::rmsnorm(&x, &weight, dim, 1e-6);
        let want3 = reference::cross_entropy::cross_entropy(&x, dim, &targets);
        let want4 = reference::attention::attention(&q, &k, &v, 1, &heads);
        let e1 = max_error(&ctx.read(&o1).await.unwrap(), &want1);
        let e2 = max_error(&ctx.read(&o2).await.unwrap(), &want2);
        let e3 = max_error(&ctx.read(&losses).await.unwrap(), &want3);
        let e4 = max_error(&ctx.read(&att).await.unwrap(), &want4);
        let (want_s, want_y) = reference::residual_norm::residual_norm(&x, &branch, &weight, Some(&bias), dim, 1e-5);
        assert_eq!(ctx.read(&rs).await.unwrap(), want_s, "residual_norm's sum");
        let e5 = max_error(&ctx.read(&ry).await.unwrap(), &want_y);
        assert!(
            e1 <= TOL && e2 <= TOL && e3 <= TOL && e4 <= TOL && e5 <= TOL,
            "layernorm {e1}, rmsnorm {e2}, cross_entropy {e3}, attention {e4}, residual_norm {e5}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// gelu, silu_mul

/// Values the exponentials must survive: large of both signs, tiny, zero.
const EXTREMES: [f32; 13] =
    [-1000.0, -100.0, -88.0, -30.0, -10.0, -1e-3, 0.0, 1e-3, 10.0, 30.0, 88.0, 100.0, 1000.0];

gpu_test! {
    async fn gelu_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(30);
        let mut worst = 0.0f32;
        for n in [1, 7, 257, 70_001] {
            let mut x: Vec<f32> = rng.vec(n).iter().map(|v| v * 8.0).collect();
            if n > EXTREMES.len() {
                x[..EXTREMES.len()].copy_from_slice(&EXTREMES);
            }
            let xg = upload(&ctx, &x).await;
            let out = ctx.zeros(&[n]).await.unwrap();
            run(&ctx, |enc| ops::gelu::encode(&ctx, enc, &xg, &out)).await;
            let got = ctx.read(&out).await.unwrap();
            assert!(got.iter().all(|v| v.is_finite()), "n={n}: non-finite output");
            let e = max_error(&got, &reference::gelu::gelu(&x));
            assert!(e <= TOL, "n={n}: max error {e}");
            worst = worst.max(e);
        }
        eprintln!("gelu: max error {worst:e}");
    }
}

gpu_test! {
    async fn silu_mul_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(31);
        let mut worst = 0.0f32;
        for n in [1, 7, 257, 70_001] {
            let mut gate: Vec<f32> = rng.vec(n).iter().map(|v| v * 20.0).collect();
            let up: Vec<f32> = rng.vec(n).iter().map(|v| v * 3.0).collect();
            if n > EXTREMES.len() {
                gate[..EXTREMES.len()].copy_from_slice(&EXTREMES);
            }
            let (gg, ug) = (upload(&ctx, &gate).await, upload(&ctx, &up).await);
            let out = ctx.zeros(&[n]).await.unwrap();
            run(&ctx, |enc| ops::silu_mul::encode(&ctx, enc, &gg, &ug, &out)).await;
            let got = ctx.read(&out).await.unwrap();
            assert!(got.iter().all(|v| v.is_finite()), "n={n}: non-finite output");
            let e = max_error(&got, &reference::silu_mul::silu_mul(&gate, &up));
            assert!(e <= TOL, "n={n}: max error {e}");
            worst = worst.max(e);
        }
        eprintln!("silu_mul: max error {worst:e}");
    }
}

// ---------------------------------------------------------------------------------------------
// rope

gpu_test! {
    /// The launcher computes the (cos, sin) table on the CPU exactly like the reference (the shader
    /// computes no angle, sine or cosine), so only the rotation's own f32 rounding differs: 1e-5 holds
    /// even at positions past 2000, where the f32 angle itself is off by ~1e-4 from the exact one
    /// (rope_angles_match_f64 bounds that).
    async fn rope_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(40);
        let mut worst = 0.0f32;
        for tokens in [1, 23] {
            for heads in [1, 3] {
                for head_dim in [2, 7, 8, 12, 64] {
                    for pos0 in [0, 5, 1000, 2025] {
                        for theta in [10_000.0f32, 500_000.0] {
                            // Three heads rotate with a second tensor of two (q and k of a
                            // grouped-query layer: entry main_pair), one head alone (main).
                            let heads_y = if heads == 3 { 2 } else { 0 };
                            let x = rng.vec(tokens * heads * head_dim);
                            let y = rng.vec(tokens * heads_y * head_dim + 1);
                            let mut want = x.clone();
                            reference::rope::rope(&mut want, heads, head_dim, pos0, theta);
                            // y's last value lies past its heads: left as it is.
                            let mut want_y = y.clone();
                            reference::rope::rope(&mut want_y[..tokens * heads_y * head_dim], heads_y.max(1), head_dim, pos0, theta);
                            let xg = ctx.upload(&x, &[tokens, heads, head_dim]).await.unwrap();
                            let yg = ctx.upload(&y, &[y.len()]).await.unwrap();
                            let targets: &[(&GpuTensor, usize)] = if heads_y > 0 { &[(&xg, heads), (&yg, heads_y)] } else { &[(&xg, heads)] };
                            run(&ctx, |enc| ops::rope::encode(&ctx, enc, targets, tokens, head_dim, pos0, theta)).await;
                            let e = max_error(&ctx.read(&xg).await.unwrap(), &want);
                            let e_y = max_error(&ctx.read(&yg).await.unwrap(), &want_y);
                            assert!(
                                e <= TOL && e_y <= TOL,
                                "tokens={tokens} heads={heads} (+{heads_y}) head_dim={head_dim} pos0={pos0} \
                                 theta={theta}: max error {e}, second tensor {e_y}"
                            );
                            worst = worst.max(e).max(e_y);
                        }
                    }
                }
            }
        }
        eprintln!("rope: max error {worst:e}");
    }
}

gpu_test! {
    /// The angles themselves, against an independent f64 computation (a = position · θ^(−2i/d),
    /// rotated in f64) at a late position and a large θ (Llama 3's 5e5): the f32 table (f32 angle,
    /// as transformers computes it) may only be off by the f32 rounding of an angle near 2025 rad,
    /// a few 1e-4; a wrong exponent, position or sign would be off by O(1).
    async fn rope_angles_match_f64() {
        let ctx = gpu().await;
        let mut rng = Rng::new(41);
        let (tokens, heads, head_dim, pos0) = (3, 2, 128, 2023);
        for theta in [500_000.0f32, 10_000.0] {
            let x = rng.vec(tokens * heads * head_dim);
            let xg = ctx.upload(&x, &[tokens, heads, head_dim]).await.unwrap();
            run(&ctx, |enc| ops::rope::encode(&ctx, enc, &[(&xg, heads)], tokens, head_dim, pos0, theta)).await;
            let got = ctx.read(&xg).await.unwrap();
            let half = head_dim / 2;
            let mut worst = 0.0f64;
            for (row, (xr, gr)) in x.chunks(head_dim).zip(got.chunks(head_dim)).enumerate() {
                let pos = (pos0 + row / heads) as f64;
                for i in 0..half {
                    let a = pos * (theta as f64).powf(-2.0 * i as f64 / head_dim as f64);
                    let (x0, x1) = (xr[i] as f64, xr[i + half] as f64);
                    let want0 = x0 * a.cos() - x1 * a.sin();
                    let want1 = x1 * a.cos() + x0 * a.sin();
                    worst = worst.max((gr[i] as f64 - want0).abs()).max((gr[i + half] as f64 - want1).abs());
                }
            }
            eprintln!("rope theta={theta} positions {pos0}..{}: max error vs f64 {worst:e}", pos0 + tokens);
            assert!(worst <= 5e-4, "theta={theta}: rope at positions {pos0}.. is off the f64 rotation by {worst}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// attention

/// Attention output and row logsumexp against the reference: (max error of out, of lse).
async fn check_attention(
    ctx: &GpuContext,
    heads: Heads,
    tokens: usize,
    past: usize,
    seed: u64,
) -> (f32, f32) {
    let mut rng = Rng::new(seed);
    let (hq, hkv, dh) = (heads.q_heads, heads.kv_heads, heads.head_dim);
    let seq = past + tokens;
    let cache = seq + 4; // a KV cache allocated longer than what is used
    let q: Vec<f32> = rng.vec(tokens * hq * dh).iter().map(|v| v * 4.0).collect(); // a peaked softmax
    let k = rng.vec(cache * hkv * dh);
    let v = rng.vec(cache * hkv * dh);
    let used = seq * hkv * dh;
    let want = reference::attention::attention(&q, &k[..used], &v[..used], past, &heads);
    let want_lse = reference::attention::attention_lse(&q, &k[..used], past, &heads);

    let qg = ctx.upload(&q, &[tokens, hq * dh]).await.unwrap();
    let kg = ctx.upload(&k, &[cache, hkv * dh]).await.unwrap();
    let vg = ctx.upload(&v, &[cache, hkv * dh]).await.unwrap();
    let out = ctx.upload(&vec![f32::NAN; tokens * hq * dh], &[tokens, hq * dh]).await.unwrap();
    let rows = ops::attention::lse_len(tokens, &heads);
    assert_eq!(rows, want_lse.len());
    // Garbage in the logsumexp buffer: every entry must be written.
    let lse = ctx.upload(&vec![f32::NAN; rows], &[rows]).await.unwrap();
    // Both entry points where `decode` holds the case, whatever the device picks by itself.
    let mut kernels = vec![ops::attention::Kernel::Tiled];
    if ops::attention::decode_fits(tokens, past, &heads) {
        kernels.push(ops::attention::Kernel::Decode);
    }
    let mut worst = (0.0f32, 0.0f32);
    for kernel in kernels {
        let garbage = vec![f32::NAN; rows.max(tokens * hq * dh)];
        ctx.queue.write_buffer(&out.buffer, 0, bytemuck::cast_slice(&garbage[..tokens * hq * dh]));
        ctx.queue.write_buffer(&lse.buffer, 0, bytemuck::cast_slice(&garbage[..rows]));
        run(ctx, |enc| ops::attention::encode_with(ctx, enc, [&qg, &kg, &vg, &out, &lse], tokens, past, &heads, kernel)).await;

        let what = format!("{kernel:?}: Hq={hq} Hkv={hkv} Dh={dh} tokens={tokens} past={past}");
        let e_out = max_error(&ctx.read(&out).await.unwrap(), &want);
        let e_lse = max_error(&ctx.read(&lse).await.unwrap(), &want_lse);
        // exp and the summation order differ from the reference (an online softmax over tiles of 256
        // keys, a tree over 256 threads for each tile's sum, teams of Dh threads for P·V; decode's
        // per-thread partial sums over keys), but only by ~3e-7 on these shapes: 1e-5 is enough.
        assert!(e_out <= TOL, "{what}: output max error {e_out}");
        assert!(e_lse <= TOL, "{what}: logsumexp max error {e_lse}");
        worst = (worst.0.max(e_out), worst.1.max(e_lse));
    }
    worst
}

gpu_test! {
    async fn attention_matches_reference() {
        let ctx = gpu().await;
        let mut worst = (0.0f32, 0.0f32);
        let mut seed = 50;
        let configs = [
            (6, 2, 8),  // grouped-query: 3 query heads per key/value head
            (3, 3, 12), // plain multi-head
        ];
        for (hq, hkv, dh) in configs {
            for tokens in [1, 23] {
                for past in [0, 5] {
                    seed += 1;
                    let heads = Heads { q_heads: hq, kv_heads: hkv, head_dim: dh };
                    let (a, b) = check_attention(&ctx, heads, tokens, past, seed).await;
                    worst = (worst.0.max(a), worst.1.max(b));
                }
            }
        }
        eprintln!("attention: max error out {:e}, lse {:e}", worst.0, worst.1);
    }
}

gpu_test! {
    /// A head_dim that does not divide 256 (uneven teams), the largest one, and more visible keys
    /// than a tile of 256 (the online softmax across tiles, the last one partial): from a long
    /// cache, and a training window of 300 tokens.
    async fn attention_large_heads_and_long_cache() {
        let ctx = gpu().await;
        let mut worst = (0.0f32, 0.0f32);
        let configs = [(2, 1, 130, 7, 5), (1, 1, 256, 2, 3), (4, 2, 16, 3, 300), (2, 2, 36, 1, 600), (2, 1, 8, 300, 0)];
        for (i, (hq, hkv, dh, tokens, past)) in configs.into_iter().enumerate() {
            let heads = Heads { q_heads: hq, kv_heads: hkv, head_dim: dh };
            let (a, b) = check_attention(&ctx, heads, tokens, past, 70 + i as u64).await;
            worst = (worst.0.max(a), worst.1.max(b));
        }
        eprintln!("attention (large): max error out {:e}, lse {:e}", worst.0, worst.1);
    }
}

// ---------------------------------------------------------------------------------------------
// cross_entropy

gpu_test! {
    async fn cross_entropy_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(60);
        let (mut worst, mut worst64) = (0.0f32, 0.0f32);
        let mut shapes: Vec<(usize, usize)> =
            ROWS.iter().flat_map(|&r| [300, 5003].into_iter().map(move |v| (r, v))).collect();
        shapes.push((2, 150_000)); // Qwen-sized vocabulary: ~590 logits per thread
        for (rows, vocab) in shapes {
            let logits: Vec<f32> = rng.vec(rows * vocab).iter().map(|v| v * 5.0).collect();
            let mut targets = random_ids(&mut rng, rows, vocab);
            targets[0] = (vocab - 1) as u32;
            let want = reference::cross_entropy::cross_entropy(&logits, vocab, &targets);

            let lg = ctx.upload(&logits, &[rows, vocab]).await.unwrap();
            let tg = ctx.upload_u32(&targets, &[rows]).await.unwrap();
            let losses = ctx.zeros(&[rows]).await.unwrap();
            run(&ctx, |enc| ops::cross_entropy::encode(&ctx, enc, &lg, &tg, &losses, rows, vocab)).await;
            let got = ctx.read(&losses).await.unwrap();
            let e = max_error(&got, &want);
            let e64 = max_error(&got, &cross_entropy_f64(&logits, vocab, &targets));
            assert!(e <= sum_tolerance(vocab), "rows={rows} vocab={vocab}: max error {e}");
            assert!(e64 <= F64_TOL, "rows={rows} vocab={vocab}: max error {e64} against f64");
            worst = worst.max(e);
            worst64 = worst64.max(e64);
        }
        eprintln!("cross_entropy: max error {worst:e} (against f64: {worst64:e})");
    }
}

gpu_test! {
    /// A target beyond the vocabulary reads nothing out of bounds and gets a loss of 0.
    async fn cross_entropy_out_of_range_target_is_zero() {
        let ctx = gpu().await;
        let (rows, vocab) = (4, 37);
        let logits: Vec<f32> = Rng::new(61).vec(rows * vocab).iter().map(|v| v * 5.0).collect();
        let targets = [3u32, vocab as u32, u32::MAX, 36];
        let lg = ctx.upload(&logits, &[rows, vocab]).await.unwrap();
        let tg = ctx.upload_u32(&targets, &[rows]).await.unwrap();
        let losses = ctx.upload(&[9.0; 4], &[rows]).await.unwrap();
        run(&ctx, |enc| ops::cross_entropy::encode(&ctx, enc, &lg, &tg, &losses, rows, vocab)).await;
        let got = ctx.read(&losses).await.unwrap();
        assert_eq!((got[1], got[2]), (0.0, 0.0));
        let valid = reference::cross_entropy::cross_entropy(
            &[&logits[..vocab], &logits[3 * vocab..]].concat(),
            vocab,
            &[3, 36],
        );
        assert!(max_error(&[got[0], got[3]], &valid) <= TOL, "{got:?} vs {valid:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// shape validation

gpu_test! {
    async fn forward_ops_reject_bad_shapes() {
        let ctx = gpu().await;
        let ctx = &ctx;
        let z = |n: usize| async move { ctx.zeros(&[n]).await };
        let (x, out) = (z(12).await.unwrap(), z(12).await.unwrap());
        let (w5, w6) = (z(5).await.unwrap(), z(6).await.unwrap());
        let err = |r: Result<(), GpuError>| r.unwrap_err().to_string();

        let e = err(ctx.run(|enc| ops::layernorm::encode(ctx, enc, &x, &w5, &w6, &out, 2, 6, 1e-5)).await);
        assert!(e.contains("layernorm") && e.contains("weight has 5 values"), "{e}");
        let e = err(ctx.run(|enc| ops::rmsnorm::encode(ctx, enc, &x, &w6, &out, 3, 6, 1e-5)).await);
        assert!(e.contains("rmsnorm") && e.contains("x has 12 values"), "{e}");

        let ids = ctx.upload_u32(&[0, 1], &[2]).await.unwrap();
        let e = err(ctx.run(|enc| ops::embedding::encode(ctx, enc, &w5, 2, 0, &ids, &out, false)).await);
        assert!(e.contains("embedding") && e.contains("dim 2"), "{e}");

        let e = err(ctx.run(|enc| ops::rope::encode(ctx, enc, &[(&x, 2)], 2, 4, 0, 10_000.0)).await);
        assert!(e.contains("rope") && e.contains("2 · 2 · 4"), "{e}");
        let e = err(ctx.run(|enc| ops::rope::encode(ctx, enc, &[(&x, 1), (&w6, 1)], 2, 4, 0, 10_000.0)).await);
        assert!(e.contains("rope") && e.contains("2 · 1 · 4") && e.contains("[6]"), "the second tensor is checked too: {e}");
        let e = err(ctx.run(|enc| ops::rope::encode(ctx, enc, &[(&w6, 1), (&w6, 1)], 1, 4, 0, 10_000.0)).await);
        assert!(e.contains("rope") && e.contains("different buffers"), "{e}");

        let e = err(ctx.run(|enc| ops::gelu::encode(ctx, enc, &x, &w6)).await);
        assert!(e.contains("gelu"), "{e}");

        let big = z(600 * 4).await.unwrap();
        let lse = z(48).await.unwrap();
        let att = |heads: Heads| {
            let (big, lse) = (&big, &lse);
            async move {
                ctx.run(|enc| ops::attention::encode(ctx, enc, big, big, big, big, lse, 2, 0, &heads)).await
            }
        };
        let e = err(att(Heads { q_heads: 1, kv_heads: 1, head_dim: 300 }).await);
        assert!(e.contains("head_dim 300"), "{e}");
        let e = err(att(Heads { q_heads: 3, kv_heads: 2, head_dim: 8 }).await);
        assert!(e.contains("not a whole multiple"), "{e}");
        let e = err(att(Heads { q_heads: 32, kv_heads: 4, head_dim: 8 }).await);
        assert!(e.contains("lse has 48 values") && e.contains("needs 64"), "{e}");
    }
}


