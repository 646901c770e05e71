//! Reference for `shaders/attention.wgsl` (with the matmuls around it): causal multi-head attention
//! with grouped-query heads.
//!   q [T, Hq·Dh] for T new tokens at positions past..past+T,
//!   k, v [S, Hkv·Dh] for all S = past + T positions (the KV cache followed by the new tokens).
//! Query head h reads key/value head h / (Hq / Hkv). Query t sees keys 0..=past+t.
//! out [T, Hq·Dh] = softmax(q·kᵀ / √Dh + causal mask) · v.

pub struct Heads {
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

pub fn attention(q: &[f32], k: &[f32], v: &[f32], past: usize, h: &Heads) -> Vec<f32> {
    let (hq, hkv, dh) = (h.q_heads, h.kv_heads, h.head_dim);
    let t_new = q.len() / (hq * dh);
    let group = hq / hkv;
    let mut out = vec![0.0; q.len()];
    for t in 0..t_new {
        for head in 0..hq {
            let kvh = head / group;
            let scores = scores(q, k, t, head, past + t + 1, h);
            let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            let o = &mut out[(t * hq + head) * dh..][..dh];
            for (s, e) in exps.iter().enumerate() {
                let vv = &v[(s * hkv + kvh) * dh..][..dh];
                for d in 0..dh {
                    o[d] += e / sum * vv[d];
                }
            }
        }
    }
    out
}

/// The scaled scores of query `t`, head `head` against keys 0..=past+t: q[t, h]·k[s, h']ᵀ / √Dh.
fn scores(q: &[f32], k: &[f32], t: usize, head: usize, visible: usize, h: &Heads) -> Vec<f32> {
    let (hq, hkv, dh) = (h.q_heads, h.kv_heads, h.head_dim);
    let kvh = head / (hq / hkv);
    let scale = 1.0 / (dh as f32).sqrt();
    let qv = &q[(t * hq + head) * dh..][..dh];
    (0..visible)
        .map(|s| {
            let kv = &k[(s * hkv + kvh) * dh..][..dh];
            qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * scale
        })
        .collect()
}

/// The logsumexp of each row of scores that the GPU forward keeps for the backward (instead of the
/// probabilities): lse[h, t] = log Σ_{s ≤ past + t} exp(q[t, h]·k[s, h']ᵀ / √Dh), [Hq, T] row-major.
pub fn attention_lse(q: &[f32], k: &[f32], past: usize, h: &Heads) -> Vec<f32> {
    let (hq, dh) = (h.q_heads, h.head_dim);
    let tokens = q.len() / (hq * dh);
    let mut lse = vec![0.0; hq * tokens];
    for t in 0..tokens {
        for head in 0..hq {
            let x = scores(q, k, t, head, past + t + 1, h);
            let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = x.iter().map(|s| (s - max).exp()).sum();
            lse[head * tokens + t] = max + sum.ln();
        }
    }
    lse
}

/// Backward of [`attention`] for training, without a KV cache (past = 0, so S = T), as the GPU
/// computes it: from the forward's output `out` [T, Hq·Dh] and [`attention_lse`] rather than stored
/// probabilities. q, out, dout [T, Hq·Dh]; k, v [T, Hkv·Dh]; lse [Hq, T]. Per query head h (key/value
/// head h' = h / (Hq / Hkv)), scale = 1/√Dh:
///   P = exp(q·kᵀ·scale − lse)  (recomputed),  D = rowsum(dout ⊙ out)  (= rowsum(P ⊙ dP)),
///   dP = dout·vᵀ,  dS = P ⊙ (dP − D),
///   dq = dS·k·scale,  dk = dSᵀ·q·scale,  dv = Pᵀ·dout,
/// where dk, dv of a key/value head sum the contributions of every query head of its group.
/// Returns (dq, dk, dv).
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    h: &Heads,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (hq, hkv, dh) = (h.q_heads, h.kv_heads, h.head_dim);
    let tokens = q.len() / (hq * dh);
    assert_eq!(k.len(), tokens * hkv * dh);
    assert_eq!(v.len(), tokens * hkv * dh);
    assert_eq!(dout.len(), q.len());
    assert_eq!(out.len(), q.len());
    assert_eq!(lse.len(), hq * tokens);
    let group = hq / hkv;
    let scale = 1.0 / (dh as f32).sqrt();
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    for head in 0..hq {
        let kvh = head / group;
        for t in 0..tokens {
            let p: Vec<f32> = scores(q, k, t, head, t + 1, h).iter().map(|x| (x - lse[head * tokens + t]).exp()).collect();
            let qo = (t * hq + head) * dh;
            let g = &dout[qo..][..dh];
            let big_d: f32 = g.iter().zip(&out[qo..][..dh]).map(|(a, b)| a * b).sum();
            for s in 0..=t {
                let ko = (s * hkv + kvh) * dh;
                let dp: f32 = g.iter().zip(&v[ko..][..dh]).map(|(a, b)| a * b).sum();
                let ds = p[s] * (dp - big_d);
                for d in 0..dh {
                    dq[qo + d] += ds * k[ko + d];
                    dk[ko + d] += ds * q[qo + d];
                    dv[ko + d] += p[s] * g[d];
                }
            }
        }
    }
    dq.iter_mut().chain(dk.iter_mut()).for_each(|x| *x *= scale);
    (dq, dk, dv)
}
