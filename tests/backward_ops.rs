//! The backward ops (input gradients of every forward op; weights are frozen) and AdamW, two ways:
//! - the GPU kernel against the CPU reference backward, on odd shapes;
//! - the CPU reference backward against central finite differences of the CPU reference forward, on
//!   small shapes and for every input element: with random weights w, L = Σ w ⊙ y is a scalar whose
//!   gradient with respect to the op's inputs is exactly what the backward computes given dy = w.

mod common;
use common::gpu;

use loratab::gpu::{self as ops, GpuContext, GpuError, GpuTensor};
use loratab::reference;
use loratab::reference::adamw::AdamW;
use loratab::reference::attention::Heads;
use loratab::reference::cross_entropy::IGNORE;
use loratab::rng::Rng;
use loratab::selftest::max_error;

/// Relative tolerance (|g − r| / max(1, |r|)) of GPU against reference.
const TOL: f32 = 1e-5;

/// Against the f32 reference over rows of `n` values: the reference sums sequentially in f32, whose
/// own error grows with n (see forward_ops.rs); beyond ~1000 values the tolerance grows with √n.
fn sum_tolerance(n: usize) -> f32 {
    TOL * (n as f32 / 1030.0).sqrt().max(1.0)
}

async fn run(
    ctx: &GpuContext,
    record: impl FnOnce(&mut loratab::gpu::Recorder) -> Result<(), GpuError>,
) {
    ctx.run(record).await.unwrap();
}

async fn upload(ctx: &GpuContext, data: &[f32]) -> GpuTensor {
    ctx.upload(data, &[data.len()]).await.unwrap()
}

/// A tensor of garbage (NaN): the kernel must overwrite every value.
async fn garbage(ctx: &GpuContext, n: usize) -> GpuTensor {
    ctx.upload(&vec![f32::NAN; n], &[n]).await.unwrap()
}

fn scaled(rng: &mut Rng, n: usize, s: f32) -> Vec<f32> {
    rng.vec(n).iter().map(|v| v * s).collect()
}

// ---------------------------------------------------------------------------------------------
// finite differences

/// Σ w ⊙ y in f64.
fn dot(w: &[f32], y: &[f32]) -> f64 {
    assert_eq!(w.len(), y.len());
    w.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Central differences of `f` at `x`, for every element: (f(x + h·e_i) − f(x − h·e_i)) divided by
/// the f32 values' actual distance (x_i ± h rounds), in f64.
fn finite_differences(x: &[f32], h: f32, f: impl Fn(&[f32]) -> f64) -> Vec<f64> {
    let mut xs = x.to_vec();
    (0..x.len())
        .map(|i| {
            let (plus, minus) = (x[i] + h, x[i] - h);
            xs[i] = plus;
            let fp = f(&xs);
            xs[i] = minus;
            let fm = f(&xs);
            xs[i] = x[i];
            (fp - fm) / (plus as f64 - minus as f64)
        })
        .collect()
}

/// Finite differences of an f32 forward in f64 with h = 1e-2: truncation error ~h²·f'''/6 ≈ 2e-5·f''',
/// noise ≈ (f32 rounding of L ≈ 1e-7·√n·|y|) / 2h ≈ 1e-5 on these sizes. So 1e-2 relative, with a
/// floor of 1e-2 of the tensor's largest gradient for the near-zero entries (whose relative error
/// means nothing), leaves a wide margin while any wrong term (a missing factor, sign, or
/// contribution) is off by far more.
const FD_H: f32 = 1e-2;
const FD_RTOL: f64 = 1e-2;

/// Worst |analytic − fd| / max(|fd|, 1e-2 · max|fd|, 1e-3); panics beyond FD_RTOL. The absolute
/// floor 1e-3 (an absolute error of 1e-5) is for tensors whose whole gradient vanishes: rmsnorm of
/// one value and layernorm of two (the output is ±weight + bias whatever x is) leave only the f32
/// cancellation of O(1) terms, ~2e-6, in the backward, and noise in the finite differences.
fn check_fd(what: &str, analytic: &[f32], fd: &[f64]) -> f64 {
    assert_eq!(analytic.len(), fd.len(), "{what}: lengths");
    let gmax = fd.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let floor = (1e-2 * gmax).max(1e-3);
    let mut worst = 0.0f64;
    for (i, (&a, &n)) in analytic.iter().zip(fd).enumerate() {
        let e = (a as f64 - n).abs() / n.abs().max(floor);
        assert!(e <= FD_RTOL, "{what}[{i}]: backward {a} vs finite differences {n} (relative error {e:e})");
        worst = worst.max(e);
    }
    worst
}

gpu_test! {
    async fn layernorm_backward_matches_finite_differences() {
        let mut rng = Rng::new(100);
        let mut worst = 0.0f64;
        for (rows, dim) in [(1, 2), (3, 5), (2, 13), (1, 37)] {
            let x: Vec<f32> = rng.vec(rows * dim).iter().map(|v| v + 0.5).collect();
            let (weight, bias, w) = (rng.vec(dim), rng.vec(dim), rng.vec(rows * dim));
            let dx = reference::layernorm::layernorm_backward(&x, &weight, &w, dim, 1e-5);
            let fd = finite_differences(&x, FD_H, |x| {
                dot(&w, &reference::layernorm::layernorm(x, &weight, &bias, dim, 1e-5))
            });
            worst = worst.max(check_fd(&format!("layernorm dx rows={rows} dim={dim}"), &dx, &fd));
        }
        eprintln!("layernorm backward vs finite differences: worst relative error {worst:e}");
    }
}

gpu_test! {
    async fn rmsnorm_backward_matches_finite_differences() {
        let mut rng = Rng::new(101);
        let mut worst = 0.0f64;
        for (rows, dim) in [(1, 1), (3, 5), (2, 13), (1, 37)] {
            let x = rng.vec(rows * dim);
            let (weight, w) = (rng.vec(dim), rng.vec(rows * dim));
            let dx = reference::rmsnorm::rmsnorm_backward(&x, &weight, &w, dim, 1e-6);
            let fd = finite_differences(&x, FD_H, |x| dot(&w, &reference::rmsnorm::rmsnorm(x, &weight, dim, 1e-6)));
            worst = worst.max(check_fd(&format!("rmsnorm dx rows={rows} dim={dim}"), &dx, &fd));
        }
        eprintln!("rmsnorm backward vs finite differences: worst relative error {worst:e}");
    }
}

gpu_test! {
    async fn gelu_backward_matches_finite_differences() {
        let mut rng = Rng::new(102);
        let x = scaled(&mut rng, 61, 5.0);
        let w = rng.vec(x.len());
        let dx = reference::gelu::gelu_backward(&x, &w);
        let fd = finite_differences(&x, FD_H, |x| dot(&w, &reference::gelu::gelu(x)));
        let worst = check_fd("gelu dx", &dx, &fd);
        eprintln!("gelu backward vs finite differences: worst relative error {worst:e}");
    }
}

gpu_test! {
    async fn silu_mul_backward_matches_finite_differences() {
        let mut rng = Rng::new(103);
        let n = 61;
        let (gate, up, w) = (scaled(&mut rng, n, 6.0), scaled(&mut rng, n, 3.0), rng.vec(n));
        let (dgate, dup) = reference::silu_mul::silu_mul_backward(&gate, &up, &w);
        let fd_gate = finite_differences(&gate, FD_H, |g| dot(&w, &reference::silu_mul::silu_mul(g, &up)));
        let fd_up = finite_differences(&up, FD_H, |u| dot(&w, &reference::silu_mul::silu_mul(&gate, u)));
        let worst = check_fd("silu_mul dgate", &dgate, &fd_gate).max(check_fd("silu_mul dup", &dup, &fd_up));
        eprintln!("silu_mul backward vs finite differences: worst relative error {worst:e}");
    }
}

gpu_test! {
    async fn rope_backward_matches_finite_differences() {
        let mut rng = Rng::new(104);
        let mut worst = 0.0f64;
        for (tokens, heads, head_dim, pos0) in [(3, 2, 6, 0), (2, 1, 7, 1000), (5, 3, 4, 17)] {
            let n = tokens * heads * head_dim;
            let (x, w) = (rng.vec(n), rng.vec(n));
            let mut dx = w.clone();
            reference::rope::rope_backward(&mut dx, heads, head_dim, pos0, 10_000.0);
            let fd = finite_differences(&x, FD_H, |x| {
                let mut y = x.to_vec();
                reference::rope::rope(&mut y, heads, head_dim, pos0, 10_000.0);
                dot(&w, &y)
            });
            let what = format!("rope dx tokens={tokens} heads={heads} head_dim={head_dim} pos0={pos0}");
            worst = worst.max(check_fd(&what, &dx, &fd));
        }
        eprintln!("rope backward vs finite differences: worst relative error {worst:e}");
    }
}

gpu_test! {
    async fn attention_backward_matches_finite_differences() {
        let mut rng = Rng::new(105);
        let mut worst = 0.0f64;
        // Grouped-query (2 query heads per kv head), plain multi-head, and one kv head for 3 query heads.
        for (hq, hkv, dh, tokens) in [(4, 2, 3, 5), (2, 2, 4, 4), (3, 1, 5, 6)] {
            let heads = Heads { q_heads: hq, kv_heads: hkv, head_dim: dh };
            let q = scaled(&mut rng, tokens * hq * dh, 2.0);
            let k = scaled(&mut rng, tokens * hkv * dh, 2.0);
            let v = rng.vec(tokens * hkv * dh);
            let w = rng.vec(tokens * hq * dh);
            let (out, lse) = (reference::attention::attention(&q, &k, &v, 0, &heads), reference::attention::attention_lse(&q, &k, 0, &heads));
            let (dq, dk, dv) = reference::attention::attention_backward(&q, &k, &v, &out, &lse, &w, &heads);
            let att = |q: &[f32], k: &[f32], v: &[f32]| dot(&w, &reference::attention::attention(q, k, v, 0, &heads));
            let what = format!("Hq={hq} Hkv={hkv} Dh={dh} T={tokens}");
            let fq = finite_differences(&q, FD_H, |x| att(x, &k, &v));
            let fk = finite_differences(&k, FD_H, |x| att(&q, x, &v));
            let fv = finite_differences(&v, FD_H, |x| att(&q, &k, x));
            worst = worst
                .max(check_fd(&format!("attention dq {what}"), &dq, &fq))
                .max(check_fd(&format!("attention dk {what}"), &dk, &fk))
                .max(check_fd(&format!("attention dv {what}"), &dv, &fv));
        }
        eprintln!("attention backward vs finite differences: worst relative error {worst:e}");
    }
}

/// scale · Σ loss over the rows whose target is a real id (the forward reference cannot index IGNORE).
fn counted_loss(logits: &[f32], vocab: usize, targets: &[u32], scale: f32) -> f64 {
    let (mut rows, mut ids) = (Vec::new(), Vec::new());
    for (row, &t) in logits.chunks(vocab).zip(targets) {
        if (t as usize) < vocab {
            rows.extend_from_slice(row);
            ids.push(t);
        }
    }
    let losses = reference::cross_entropy::cross_entropy(&rows, vocab, &ids);
    scale as f64 * losses.iter().map(|&l| l as f64).sum::<f64>()
}

gpu_test! {
    async fn cross_entropy_backward_matches_finite_differences() {
        let mut rng = Rng::new(106);
        let (rows, vocab) = (5, 11);
        let logits = scaled(&mut rng, rows * vocab, 3.0);
        let targets = [3, IGNORE, 0, 10, 7];
        let scale = 0.25; // a mean over the 4 counted rows
        let d = reference::cross_entropy::cross_entropy_backward(&logits, vocab, &targets, scale);
        assert!(d[vocab..2 * vocab].iter().all(|&v| v == 0.0), "the ignored row has a gradient");
        let fd = finite_differences(&logits, FD_H, |l| counted_loss(l, vocab, &targets, scale));
        let worst = check_fd("cross_entropy dlogits", &d, &fd);
        // Each counted row's gradient sums to 0 (softmax sums to 1).
        for r in [0, 2, 3, 4] {
            let s: f32 = d[r * vocab..][..vocab].iter().sum();
            assert!(s.abs() < 1e-6, "row {r} sums to {s}");
        }
        eprintln!("cross_entropy backward vs finite differences: worst relative error {worst:e}");
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
    async fn layernorm_backward_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(120);
        let mut worst = 0.0f32;
        for (rows, dim) in norm_shapes() {
            // A common offset of 3 per row: the two-pass variance must not lose it.
            let x: Vec<f32> = rng.vec(rows * dim).iter().map(|v| v + 3.0).collect();
            let (weight, dy) = (rng.vec(dim), rng.vec(rows * dim));
            let want = reference::layernorm::layernorm_backward(&x, &weight, &dy, dim, 1e-5);

            let (xg, wg, dyg) = (upload(&ctx, &x).await, upload(&ctx, &weight).await, upload(&ctx, &dy).await);
            let dx = garbage(&ctx, rows * dim).await;
            run(&ctx, |enc| ops::layernorm::encode_backward(&ctx, enc, &xg, &wg, &dyg, &dx, rows, dim, 1e-5)).await;
            let e = max_error(&ctx.read(&dx).await.unwrap(), &want);
            assert!(e <= sum_tolerance(dim), "rows={rows} dim={dim}: max error {e}");
            worst = worst.max(e);
        }
        eprintln!("layernorm backward: max error {worst:e}");
    }
}

gpu_test! {
    async fn rmsnorm_backward_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(121);
        let mut worst = 0.0f32;
        for (rows, dim) in norm_shapes() {
            let x = rng.vec(rows * dim);
            let (weight, dy) = (rng.vec(dim), rng.vec(rows * dim));
            let want = reference::rmsnorm::rmsnorm_backward(&x, &weight, &dy, dim, 1e-6);

            let (xg, wg, dyg) = (upload(&ctx, &x).await, upload(&ctx, &weight).await, upload(&ctx, &dy).await);
            let dx = garbage(&ctx, rows * dim).await;
            run(&ctx, |enc| ops::rmsnorm::encode_backward(&ctx, enc, &xg, &wg, &dyg, &dx, rows, dim, 1e-6)).await;
            let e = max_error(&ctx.read(&dx).await.unwrap(), &want);
            assert!(e <= sum_tolerance(dim), "rows={rows} dim={dim}: max error {e}");
            worst = worst.max(e);
        }
        eprintln!("rmsnorm backward: max error {worst:e}");
    }
}

// ---------------------------------------------------------------------------------------------
// gelu, silu_mul

/// Values the exponentials must survive: large of both signs, tiny, zero.
const EXTREMES: [f32; 13] =
    [-1000.0, -100.0, -88.0, -30.0, -10.0, -1e-3, 0.0, 1e-3, 10.0, 30.0, 88.0, 100.0, 1000.0];

gpu_test! {
    async fn gelu_backward_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(130);
        let mut worst = 0.0f32;
        for n in [1, 7, 257, 70_001] {
            let mut x = scaled(&mut rng, n, 8.0);
            if n > EXTREMES.len() {
                x[..EXTREMES.len()].copy_from_slice(&EXTREMES);
            }
            let dy = scaled(&mut rng, n, 2.0);
            let (xg, dyg) = (upload(&ctx, &x).await, upload(&ctx, &dy).await);
            let dx = garbage(&ctx, n).await;
            run(&ctx, |enc| ops::gelu::encode_backward(&ctx, enc, &xg, &dyg, &dx)).await;
            let got = ctx.read(&dx).await.unwrap();
            assert!(got.iter().all(|v| v.is_finite()), "n={n}: non-finite gradient");
            let e = max_error(&got, &reference::gelu::gelu_backward(&x, &dy));
            assert!(e <= TOL, "n={n}: max error {e}");
            worst = worst.max(e);
        }
        eprintln!("gelu backward: max error {worst:e}");
    }
}

gpu_test! {
    async fn silu_mul_backward_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(131);
        let mut worst = 0.0f32;
        for n in [1, 7, 257, 70_001] {
            let mut gate = scaled(&mut rng, n, 20.0);
            if n > EXTREMES.len() {
                gate[..EXTREMES.len()].copy_from_slice(&EXTREMES);
            }
            let (up, dout) = (scaled(&mut rng, n, 3.0), scaled(&mut rng, n, 2.0));
            let (gg, ug, dg) = (upload(&ctx, &gate).await, upload(&ctx, &up).await, upload(&ctx, &dout).await);
            let (dgate, dup) = (garbage(&ctx, n).await, garbage(&ctx, n).await);
            run(&ctx, |enc| ops::silu_mul::encode_backward(&ctx, enc, &gg, &ug, &dg, &dgate, &dup)).await;
            let (got_g, got_u) = (ctx.read(&dgate).await.unwrap(), ctx.read(&dup).await.unwrap());
            assert!(got_g.iter().chain(&got_u).all(|v| v.is_finite()), "n={n}: non-finite gradient");
            let (want_g, want_u) = reference::silu_mul::silu_mul_backward(&gate, &up, &dout);
            let (eg, eu) = (max_error(&got_g, &want_g), max_error(&got_u, &want_u));
            assert!(eg <= TOL && eu <= TOL, "n={n}: max error dgate {eg}, dup {eu}");
            worst = worst.max(eg).max(eu);
        }
        eprintln!("silu_mul backward: max error {worst:e}");
    }
}

// ---------------------------------------------------------------------------------------------
// rope

gpu_test! {
    /// Same angles as the forward (CPU frequencies, the shader's reduction), so 1e-5 holds as there;
    /// and the GPU backward undoes the GPU forward (the rotation is orthogonal).
    async fn rope_backward_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(140);
        let (mut worst, mut worst_trip) = (0.0f32, 0.0f32);
        for tokens in [1, 23] {
            for heads in [1, 3] {
                for head_dim in [2, 7, 12, 64] {
                    for pos0 in [0, 5, 2025] {
                        for theta in [10_000.0f32, 500_000.0] {
                            let what = format!("tokens={tokens} heads={heads} head_dim={head_dim} pos0={pos0} theta={theta}");
                            let dy = rng.vec(tokens * heads * head_dim);
                            let mut want = dy.clone();
                            reference::rope::rope_backward(&mut want, heads, head_dim, pos0, theta);
                            let g = ctx.upload(&dy, &[tokens, heads, head_dim]).await.unwrap();
                            run(&ctx, |enc| ops::rope::encode_backward(&ctx, enc, &[(&g, heads)], tokens, head_dim, pos0, theta)).await;
                            let e = max_error(&ctx.read(&g).await.unwrap(), &want);
                            assert!(e <= TOL, "{what}: max error {e}");
                            worst = worst.max(e);

                            // forward then backward: the identity.
                            run(&ctx, |enc| {
                                ops::rope::encode(&ctx, enc, &[(&g, heads)], tokens, head_dim, pos0, theta)?;
                                ops::rope::encode_backward(&ctx, enc, &[(&g, heads)], tokens, head_dim, pos0, theta)
                            })
                            .await;
                            let back = ctx.read(&g).await.unwrap();
                            let e = max_error(&back, &want);
                            assert!(e <= TOL, "{what}: rope_backward(rope(x)) is off x by {e}");
                            worst_trip = worst_trip.max(e);
                        }
                    }
                }
            }
        }
        eprintln!("rope backward: max error {worst:e}, round trip {worst_trip:e}");
    }
}

// ---------------------------------------------------------------------------------------------
// attention

/// GPU attention backward against the reference backward (both given the reference forward's out
/// and logsumexp), with garbage in every output and in the scratch; returns the max error over dq,
/// dk, dv. With `gpu_forward`, out and lse come from the GPU forward instead (the whole training
/// chain), compared with the reference backward on the reference's.
async fn check_attention_backward(ctx: &GpuContext, heads: Heads, tokens: usize, seed: u64, gpu_forward: bool) -> f32 {
    let mut rng = Rng::new(seed);
    let (hq, hkv, dh) = (heads.q_heads, heads.kv_heads, heads.head_dim);
    let q = scaled(&mut rng, tokens * hq * dh, 3.0); // a peaked softmax
    let k = rng.vec(tokens * hkv * dh);
    let v = rng.vec(tokens * hkv * dh);
    let dout = rng.vec(tokens * hq * dh);
    let out = reference::attention::attention(&q, &k, &v, 0, &heads);
    let lse = reference::attention::attention_lse(&q, &k, 0, &heads);
    let (want_q, want_k, want_v) = reference::attention::attention_backward(&q, &k, &v, &out, &lse, &dout, &heads);

    let (qg, kg, vg) = (upload(ctx, &q).await, upload(ctx, &k).await, upload(ctx, &v).await);
    let dog = upload(ctx, &dout).await;
    let rows = ops::attention::lse_len(tokens, &heads);
    assert_eq!(rows, lse.len());
    let (og, lg) = if gpu_forward {
        let (og, lg) = (garbage(ctx, out.len()).await, garbage(ctx, rows).await);
        run(ctx, |enc| ops::attention::encode(ctx, enc, &qg, &kg, &vg, &og, &lg, tokens, 0, &heads)).await;
        (og, lg)
    } else {
        (upload(ctx, &out).await, upload(ctx, &lse).await)
    };
    let (dq, dk, dv) = (garbage(ctx, q.len()).await, garbage(ctx, k.len()).await, garbage(ctx, v.len()).await);
    let delta = garbage(ctx, rows).await;
    run(ctx, |enc| {
        ops::attention::encode_backward(ctx, enc, &qg, &kg, &vg, &og, &lg, &dog, &dq, &dk, &dv, &delta, tokens, &heads)
    })
    .await;

    let what = format!("Hq={hq} Hkv={hkv} Dh={dh} tokens={tokens} gpu_forward={gpu_forward}");
    let eq = max_error(&ctx.read(&dq).await.unwrap(), &want_q);
    let ek = max_error(&ctx.read(&dk).await.unwrap(), &want_k);
    let ev = max_error(&ctx.read(&dv).await.unwrap(), &want_v);
    // The scratch holds D[h, t] = dout[t, h]·out[t, h] for every row.
    let big_d: Vec<f32> = (0..hq * tokens)
        .map(|r| {
            let o = ((r % tokens) * hq + r / tokens) * dh;
            dout[o..][..dh].iter().zip(&out[o..][..dh]).map(|(a, b)| a * b).sum()
        })
        .collect();
    let ed = max_error(&ctx.read(&delta).await.unwrap(), &big_d);
    // Sums of up to group · T products in another order than the reference: ~1e-6 on these shapes.
    assert!(eq <= TOL && ek <= TOL && ev <= TOL && ed <= TOL, "{what}: max error dq {eq}, dk {ek}, dv {ev}, D {ed}");
    eq.max(ek).max(ev)
}

gpu_test! {
    async fn attention_backward_matches_reference() {
        let ctx = gpu().await;
        let mut worst = 0.0f32;
        let configs = [
            (6, 2, 8, 1),   // grouped-query: 3 query heads per key/value head; one token
            (6, 2, 8, 23),
            (3, 3, 12, 23), // plain multi-head
            (8, 1, 4, 37),  // one key/value head for 8 query heads
            (2, 1, 130, 7), // a head_dim that does not divide 256 (uneven teams)
            (1, 1, 256, 3), // the largest head_dim
            (2, 1, 16, 300), // more keys than a tile (two tiles, the last partial), long columns for dk/dv
            (1, 1, 8, 256),  // exactly one tile of keys
        ];
        for (i, (hq, hkv, dh, tokens)) in configs.into_iter().enumerate() {
            let heads = Heads { q_heads: hq, kv_heads: hkv, head_dim: dh };
            worst = worst.max(check_attention_backward(&ctx, heads, tokens, 150 + i as u64, false).await);
        }
        // out and lse from the GPU forward: the training chain forward → backward.
        for (i, (hq, hkv, dh, tokens)) in [(6, 2, 8, 23), (2, 1, 130, 7), (2, 1, 16, 300)].into_iter().enumerate() {
            let heads = Heads { q_heads: hq, kv_heads: hkv, head_dim: dh };
            worst = worst.max(check_attention_backward(&ctx, heads, tokens, 170 + i as u64, true).await);
        }
        eprintln!("attention backward: max error {worst:e}");
    }
}

// ---------------------------------------------------------------------------------------------
// cross_entropy

/// The reference backward's formula in f64.
fn cross_entropy_backward_f64(logits: &[f32], vocab: usize, targets: &[u32], scale: f32) -> Vec<f64> {
    let mut d = vec![0.0; logits.len()];
    for ((row, &t), dr) in logits.chunks(vocab).zip(targets).zip(d.chunks_mut(vocab)) {
        if t as usize >= vocab {
            continue;
        }
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        for (j, (o, &l)) in dr.iter_mut().zip(row).enumerate() {
            *o = scale as f64 * ((l as f64 - max).exp() / sum - if j == t as usize { 1.0 } else { 0.0 });
        }
    }
    d
}

gpu_test! {
    async fn cross_entropy_backward_matches_reference() {
        let ctx = gpu().await;
        let mut rng = Rng::new(160);
        let (mut worst, mut worst_rel) = (0.0f32, 0.0f32);
        let mut shapes: Vec<(usize, usize)> =
            ROWS.iter().flat_map(|&r| [300, 5003].into_iter().map(move |v| (r, v))).collect();
        shapes.push((2, 150_000)); // Qwen-sized vocabulary: ~590 logits per thread
        for (rows, vocab) in shapes {
            let logits = scaled(&mut rng, rows * vocab, 5.0);
            let mut targets: Vec<u32> = (0..rows).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
            targets[0] = (vocab - 1) as u32;
            if rows > 2 {
                targets[1] = IGNORE;
                targets[2] = vocab as u32; // out of range: ignored like the forward's loss of 0
            }
            let counted = targets.iter().filter(|&&t| (t as usize) < vocab).count();
            let scale = 1.0 / counted as f32;
            let want = reference::cross_entropy::cross_entropy_backward(&logits, vocab, &targets, scale);

            let lg = ctx.upload(&logits, &[rows, vocab]).await.unwrap();
            let tg = ctx.upload_u32(&targets, &[rows]).await.unwrap();
            let d = garbage(&ctx, rows * vocab).await;
            run(&ctx, |enc| ops::cross_entropy::encode_backward(&ctx, enc, &lg, &tg, &d, rows, vocab, scale)).await;
            let got = ctx.read(&d).await.unwrap();
            let e = max_error(&got, &want);
            assert!(e <= TOL, "rows={rows} vocab={vocab}: max error {e}");
            if rows > 2 {
                assert!(got[vocab..3 * vocab].iter().all(|&v| v == 0.0), "rows={rows} vocab={vocab}: ignored rows");
            }
            // The entries are mostly ~scale/vocab, far below TOL: also hold each one to a relative
            // error, against f64 (the f32 reference's sequential sum over 150 000 exponentials is
            // itself off by up to 2e-4 relative; the GPU's tree sum by ~5e-7). WGSL bounds exp's error
            // by 3 + 2·|x| ulp (x = logit − max ≥ −10 here: ~1.4e-6): 1e-5 relative.
            let want64 = cross_entropy_backward_f64(&logits, vocab, &targets, scale);
            let rel = got.iter().zip(&want64).fold(0.0f32, |m, (&g, &r)| {
                m.max(((g as f64 - r).abs() / r.abs().max(1e-30)) as f32)
            });
            assert!(rel <= 1e-5, "rows={rows} vocab={vocab}: max relative error {rel} against f64");
            worst = worst.max(e);
            worst_rel = worst_rel.max(rel);
        }
        eprintln!("cross_entropy backward: max error {worst:e}, max relative error against f64 {worst_rel:e}");
    }
}

// ---------------------------------------------------------------------------------------------
// adamw

/// torch.optim.AdamW's update as its documentation writes it, in f64: the reference must follow it.
#[allow(clippy::too_many_arguments)]
fn adamw_f64(p: &mut [f64], g: &[f32], m: &mut [f64], v: &mut [f64], o: &AdamW, step: u32, grad_scale: f32) {
    let (lr, b1, b2, eps, wd) = (o.lr as f64, o.beta1 as f64, o.beta2 as f64, o.eps as f64, o.weight_decay as f64);
    for i in 0..p.len() {
        let g = g[i] as f64 * grad_scale as f64;
        p[i] *= 1.0 - lr * wd;
        m[i] = b1 * m[i] + (1.0 - b1) * g;
        v[i] = b2 * v[i] + (1.0 - b2) * g * g;
        let mhat = m[i] / (1.0 - b1.powi(step as i32));
        let vhat = v[i] / (1.0 - b2.powi(step as i32));
        p[i] -= lr * mhat / (vhat.sqrt() + eps);
    }
}

/// Worst |got − want| / max(|want|, floor).
fn rel_error(got: &[f32], want: &[f32], floor: f32) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).fold(0.0f32, |m, (g, w)| {
        let e = (g - w).abs() / w.abs().max(floor);
        if e.is_finite() { m.max(e) } else { f32::INFINITY }
    })
}

#[test]
#[cfg(not(target_arch = "wasm32"))]
fn adamw_default_is_pytorchs() {
    assert_eq!(AdamW::default(), AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 });
}

gpu_test! {
    async fn adamw_matches_reference_over_steps() {
        let ctx = gpu().await;
        let mut rng = Rng::new(180);
        let (mut worst, mut worst64) = (0.0f32, 0.0f32);
        let status = ctx.zeros(&[1]).await.unwrap();
        let configs = [
            (AdamW::default(), 1.0f32),
            (AdamW { lr: 3e-2, beta1: 0.8, beta2: 0.95, eps: 1e-6, weight_decay: 0.1 }, 0.37),
            (AdamW { weight_decay: 0.0, ..AdamW::default() }, 2.5),
        ];
        for (opt, grad_scale) in configs {
            for n in [1, 7, 70_001] {
                let p0 = rng.vec(n);
                let mut p = p0.clone();
                let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
                let mut p64: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
                let (mut m64, mut v64) = (vec![0.0f64; n], vec![0.0f64; n]);
                let pg = upload(&ctx, &p0).await;
                let (mg, vg) = (ctx.zeros(&[n]).await.unwrap(), ctx.zeros(&[n]).await.unwrap());
                // Steps 1..=5 with fresh gradients, then far-apart step numbers (bias corrections → 1).
                for step in [1, 2, 3, 4, 5, 100, 10_000] {
                    let g = rng.vec(n);
                    let slot = reference::adamw::Slot { p: &mut p, g: &g, m: &mut m, v: &mut v };
                    assert!(reference::adamw::adamw_step(&mut [slot], &opt, step, grad_scale));
                    adamw_f64(&mut p64, &g, &mut m64, &mut v64, &opt, step, grad_scale);
                    let gg = upload(&ctx, &g).await;
                    let slot = ops::adamw::Slot { param: &pg, grad: &gg, m: &mg, v: &vg };
                    run(&ctx, |enc| ops::adamw::encode(&ctx, enc, &[slot], &status, &opt, step, grad_scale)).await;
                    assert_eq!(ctx.read_u32(&status).await.unwrap(), [0]);

                    let what = format!("{opt:?} grad_scale={grad_scale} n={n} step={step}");
                    // Relative to max(|p|, 0.1): an update is up to lr/(1 − β1) ≈ 0.15 here, and a
                    // parameter it brings near 0 keeps an absolute error of ~ulp(0.1) ≈ 7e-9 from
                    // the cancellation, which is what matters there.
                    let ep = rel_error(&ctx.read(&pg).await.unwrap(), &p, 0.1);
                    let em = rel_error(&ctx.read(&mg).await.unwrap(), &m, 1e-3);
                    let ev = rel_error(&ctx.read(&vg).await.unwrap(), &v, 1e-6);
                    assert!(ep <= 1e-6 && em <= 1e-6 && ev <= 1e-6, "{what}: GPU vs reference: p {ep}, m {em}, v {ev}");
                    worst = worst.max(ep).max(em).max(ev);

                    let p64f: Vec<f32> = p64.iter().map(|&x| x as f32).collect();
                    let e64 = rel_error(&p, &p64f, 0.1);
                    assert!(e64 <= 1e-6, "{what}: reference vs f64 torch formula: p {e64}");
                    worst64 = worst64.max(e64);
                }
            }
        }
        eprintln!("adamw: max relative error {worst:e} (reference vs f64: {worst64:e})");
    }
}

gpu_test! {
    /// An update that would write ±∞ or NaN anywhere writes nothing, in every tensor of the step,
    /// on the GPU as in the reference: a learning rate whose step size overflows f32 (lr / (1 − β1)
    /// ≥ 3.4e38), and, at an ordinary learning rate, one gradient whose (1 − β2)·g² overflows (v = ∞,
    /// while p stays finite). The GPU's flag then stays set, so a later update writes nothing
    /// either until the flag is cleared; after that an update applies as the reference's does.
    async fn adamw_writes_nothing_when_an_update_overflows() {
        let ctx = gpu().await;
        let mut rng = Rng::new(181);
        let n = [300, 7];
        /// Every tensor holds, bit for bit, what it held before.
        async fn unchanged(ctx: &GpuContext, gpu_t: &[[GpuTensor; 4]], before: &[[Vec<f32>; 4]], what: &str) {
            let bits = |x: &[f32]| -> Vec<u32> { x.iter().map(|v| v.to_bits()).collect() };
            for (t, b) in gpu_t.iter().zip(before) {
                for (g, h) in t.iter().zip(b) {
                    assert_eq!(bits(&ctx.read(g).await.unwrap()), bits(h), "{what}");
                }
            }
        }
        let cases = [(AdamW { lr: 1e38, ..AdamW::default() }, None), (AdamW::default(), Some(1e21f32))];
        for (opt, huge) in cases {
            // p, g, m, v of two tensors; the second's gradient carries the huge value.
            let mut host: Vec<[Vec<f32>; 4]> = n.iter().map(|&n| [rng.vec(n), rng.vec(n), rng.vec(n), rng.vec(n).iter().map(|x| x * x).collect()]).collect();
            if let Some(h) = huge {
                host[1][1][3] = h;
            }
            let mut gpu_t = Vec::new();
            for t in &host {
                gpu_t.push([upload(&ctx, &t[0]).await, upload(&ctx, &t[1]).await, upload(&ctx, &t[2]).await, upload(&ctx, &t[3]).await]);
            }
            let slots: Vec<ops::adamw::Slot> = gpu_t.iter().map(|t| ops::adamw::Slot { param: &t[0], grad: &t[1], m: &t[2], v: &t[3] }).collect();
            let status = ctx.zeros(&[1]).await.unwrap();
            let before = host.clone();
            let reference_step = |host: &mut Vec<[Vec<f32>; 4]>, opt: &AdamW, scale: f32| {
                let mut slots: Vec<reference::adamw::Slot> = host.iter_mut().map(|[p, g, m, v]| reference::adamw::Slot { p, g: &*g, m, v }).collect();
                reference::adamw::adamw_step(&mut slots, opt, 2, scale)
            };
            assert!(!reference_step(&mut host, &opt, 1.0), "{opt:?}: the reference refuses");
            assert_eq!(host, before, "{opt:?}: the reference wrote nothing");
            run(&ctx, |enc| ops::adamw::encode(&ctx, enc, &slots, &status, &opt, 2, 1.0)).await;
            assert_eq!(ctx.read_u32(&status).await.unwrap(), [1], "{opt:?}: flagged");
            unchanged(&ctx, &gpu_t, &before, &format!("{opt:?}: the GPU wrote nothing")).await;
            // Sticky: an update that would be fine writes nothing while the flag is set.
            let fine = AdamW::default();
            let scale = if huge.is_some() { 0.0 } else { 1.0 };
            run(&ctx, |enc| ops::adamw::encode(&ctx, enc, &slots, &status, &fine, 2, scale)).await;
            unchanged(&ctx, &gpu_t, &before, &format!("{opt:?}: nothing is written while the flag is set")).await;
            // Cleared, the same update applies, as the reference's.
            ctx.queue.write_buffer(&status.buffer, 0, &[0; 4]);
            run(&ctx, |enc| ops::adamw::encode(&ctx, enc, &slots, &status, &fine, 2, scale)).await;
            assert_eq!(ctx.read_u32(&status).await.unwrap(), [0], "{opt:?}: the fine update is not flagged");
            assert!(reference_step(&mut host, &fine, scale));
            for (t, h) in gpu_t.iter().zip(&host) {
                for (g, h) in t.iter().zip(h) {
                    let e = rel_error(&ctx.read(g).await.unwrap(), h, 0.1);
                    assert!(e <= 1e-6, "{opt:?}: after clearing, GPU vs reference {e}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// grids, shapes

gpu_test! {
    /// More rows than one grid row of workgroups holds: every backward row kernel spills into y and
    /// must rebuild its row (the grid cap lowered to 3 per dimension: 14 rows make a 3 × 5 grid).
    async fn backward_row_kernels_beyond_one_grid_row() {
        let ctx = gpu().await;
        ctx.set_max_workgroups_per_dim(3);
        let (rows, dim) = (14, 2);
        let mut rng = Rng::new(190);
        let (x, dy) = (rng.vec(rows * dim), rng.vec(rows * dim));
        let weight = rng.vec(dim);
        let (xg, dyg, wg) = (upload(&ctx, &x).await, upload(&ctx, &dy).await, upload(&ctx, &weight).await);
        let (d1, d2, d3) = (garbage(&ctx, rows * dim).await, garbage(&ctx, rows * dim).await, garbage(&ctx, rows * dim).await);
        let targets: Vec<u32> = (0..rows).map(|r| (r % dim) as u32).collect();
        let tg = ctx.upload_u32(&targets, &[rows]).await.unwrap();
        // Attention with one query and one key/value head per row, a single token, Dh = 1.
        let heads = Heads { q_heads: rows, kv_heads: rows, head_dim: 1 };
        let (q, k, v, dout) = (rng.vec(rows), rng.vec(rows), rng.vec(rows), rng.vec(rows));
        let (out, lse) = (reference::attention::attention(&q, &k, &v, 0, &heads), reference::attention::attention_lse(&q, &k, 0, &heads));
        let (qg, kg, vg, dog) = (upload(&ctx, &q).await, upload(&ctx, &k).await, upload(&ctx, &v).await, upload(&ctx, &dout).await);
        let (og, lg) = (upload(&ctx, &out).await, upload(&ctx, &lse).await);
        let (dq, dk, dv, delta) =
            (garbage(&ctx, rows).await, garbage(&ctx, rows).await, garbage(&ctx, rows).await, garbage(&ctx, rows).await);
        run(&ctx, |enc| {
            ops::layernorm::encode_backward(&ctx, enc, &xg, &wg, &dyg, &d1, rows, dim, 1e-5)?;
            ops::rmsnorm::encode_backward(&ctx, enc, &xg, &wg, &dyg, &d2, rows, dim, 1e-6)?;
            ops::cross_entropy::encode_backward(&ctx, enc, &xg, &tg, &d3, rows, dim, 0.5)?;
            ops::attention::encode_backward(&ctx, enc, &qg, &kg, &vg, &og, &lg, &dog, &dq, &dk, &dv, &delta, 1, &heads)
        })
        .await;
        let want1 = reference::layernorm::layernorm_backward(&x, &weight, &dy, dim, 1e-5);
        let want2 = reference::rmsnorm::rmsnorm_backward(&x, &weight, &dy, dim, 1e-6);
        let want3 = reference::cross_entropy::cross_entropy_backward(&x, dim, &targets, 0.5);
        let (wq, wk, wv) = reference::attention::attention_backward(&q, &k, &v, &out, &lse, &dout, &heads);
        let e1 = max_error(&ctx.read(&d1).await.unwrap(), &want1);
        let e2 = max_error(&ctx.read(&d2).await.unwrap(), &want2);
        let e3 = max_error(&ctx.read(&d3).await.unwrap(), &want3);
        let e4 = max_error(&ctx.read(&dq).await.unwrap(), &wq)
            .max(max_error(&ctx.read(&dk).await.unwrap(), &wk))
            .max(max_error(&ctx.read(&dv).await.unwrap(), &wv));
        assert!(
            e1 <= TOL && e2 <= TOL && e3 <= TOL && e4 <= TOL,
            "layernorm {e1}, rmsnorm {e2}, cross_entropy {e3}, attention {e4}"
        );
    }
}

/// The error of an attention backward over 4 tokens with every tensor `t` but the scratch.
async fn attention_error(ctx: &GpuContext, t: &GpuTensor, scratch: &GpuTensor, heads: Heads) -> String {
    let r = ctx
        .run(|enc| ops::attention::encode_backward(ctx, enc, t, t, t, t, t, t, t, t, t, scratch, 4, &heads))
        .await;
    r.unwrap_err().to_string()
}

gpu_test! {
    async fn backward_ops_reject_bad_shapes() {
        let ctx = gpu().await;
        let ctx = &ctx;
        let z = |n: usize| async move { ctx.zeros(&[n]).await.unwrap() };
        let (x, dy, dx) = (z(12).await, z(12).await, z(12).await);
        let (w5, w6, short) = (z(5).await, z(6).await, z(11).await);
        let err = |r: Result<(), GpuError>| r.unwrap_err().to_string();

        let e = err(ctx.run(|enc| ops::layernorm::encode_backward(ctx, enc, &x, &w5, &dy, &dx, 2, 6, 1e-5)).await);
        assert!(e.contains("layernorm_backward") && e.contains("weight has 5 values"), "{e}");
        let e = err(ctx.run(|enc| ops::rmsnorm::encode_backward(ctx, enc, &x, &w6, &short, &dx, 2, 6, 1e-5)).await);
        assert!(e.contains("rmsnorm_backward") && e.contains("dy has 11 values"), "{e}");
        let e = err(ctx.run(|enc| ops::gelu::encode_backward(ctx, enc, &x, &short, &dx)).await);
        assert!(e.contains("gelu_backward"), "{e}");
        let e = err(ctx.run(|enc| ops::silu_mul::encode_backward(ctx, enc, &x, &dy, &dx, &dx, &short)).await);
        assert!(e.contains("silu_mul_backward"), "{e}");
        let e = err(ctx.run(|enc| ops::rope::encode_backward(ctx, enc, &[(&x, 2)], 2, 4, 0, 10_000.0)).await);
        assert!(e.contains("rope_backward") && e.contains("2 · 2 · 4"), "{e}");

        let ids = ctx.upload_u32(&[0, 1], &[2]).await.unwrap();
        let e = err(ctx.run(|enc| ops::cross_entropy::encode_backward(ctx, enc, &x, &ids, &short, 2, 6, 1.0)).await);
        assert!(e.contains("cross_entropy_backward") && e.contains("dlogits has 11 values"), "{e}");

        let big = z(600 * 4).await;
        let small = z(16).await;
        let e = attention_error(ctx, &big, &big, Heads { q_heads: 1, kv_heads: 1, head_dim: 300 }).await;
        assert!(e.contains("attention_backward") && e.contains("head_dim 300"), "{e}");
        let e = attention_error(ctx, &big, &big, Heads { q_heads: 3, kv_heads: 2, head_dim: 8 }).await;
        assert!(e.contains("not a whole multiple"), "{e}");
        let e = attention_error(ctx, &big, &small, Heads { q_heads: 8, kv_heads: 4, head_dim: 8 }).await;
        assert!(e.contains("delta has 16 values") && e.contains("needs 32"), "{e}");

        let (p, g, m, v) = (z(7).await, z(7).await, z(7).await, z(6).await);
        let opt = AdamW::default();
        let slot = |v| ops::adamw::Slot { param: &p, grad: &g, m: &m, v };
        let e = err(ctx.run(|enc| ops::adamw::encode(ctx, enc, &[slot(&v)], &m, &opt, 1, 1.0)).await);
        assert!(e.contains("adamw") && e.contains("as many values"), "{e}");
        let e = err(ctx.run(|enc| ops::adamw::encode(ctx, enc, &[slot(&m)], &m, &opt, 0, 1.0)).await);
        assert!(e.contains("step 0"), "{e}");
    }
}
