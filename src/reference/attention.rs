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
    let scale = 1.0 / (dh as f32).sqrt();
    let mut out = vec![0.0; q.len()];
    for t in 0..t_new {
        let visible = past + t + 1;
        for head in 0..hq {
            let kvh = head / group;
            let qv = &q[(t * hq + head) * dh..][..dh];
            let scores: Vec<f32> = (0..visible)
                .map(|s| {
                    let kv = &k[(s * hkv + kvh) * dh..][..dh];
                    qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
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

/// The softmax probabilities [`attention`] computes internally (and the GPU forward keeps):
/// P [Hq, T, S] row-major, S = past + T, 0 beyond the causal mask.
pub fn attention_probs(q: &[f32], k: &[f32], past: usize, h: &Heads) -> Vec<f32> {
    let (hq, hkv, dh) = (h.q_heads, h.kv_heads, h.head_dim);
    let tokens = q.len() / (hq * dh);
    let seq = past + tokens;
    let group = hq / hkv;
    let scale = 1.0 / (dh as f32).sqrt();
    let mut p = vec![0.0; hq * tokens * seq];
    for t in 0..tokens {
        for head in 0..hq {
            let kvh = head / group;
            let qv = &q[(t * hq + head) * dh..][..dh];
            let scores: Vec<f32> = (0..=past + t)
                .map(|s| {
                    let kv = &k[(s * hkv + kvh) * dh..][..dh];
                    qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = scores.iter().map(|s| (s - max).exp()).sum();
            for (s, sc) in scores.iter().enumerate() {
                p[(head * tokens + t) * seq + s] = (sc - max).exp() / sum;
            }
        }
    }
    p
}

/// Backward of [`attention`] for training, without a KV cache (past = 0, so S = T): q, dout
/// [T, Hq·Dh]; k, v [T, Hkv·Dh]; probs [Hq, T, T] as [`attention_probs`] (or the GPU forward) gives
/// them. Per query head h (key/value head h' = h / (Hq / Hkv)), scale = 1/√Dh:
///   dP = dout·vᵀ,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),
///   dq = dS·k·scale,  dk = dSᵀ·q·scale,  dv = Pᵀ·dout,
/// where dk, dv of a key/value head sum the contributions of every query head of its group.
/// Returns (dq, dk, dv).
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    dout: &[f32],
    h: &Heads,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (hq, hkv, dh) = (h.q_heads, h.kv_heads, h.head_dim);
    let tokens = q.len() / (hq * dh);
    assert_eq!(k.len(), tokens * hkv * dh);
    assert_eq!(v.len(), tokens * hkv * dh);
    assert_eq!(dout.len(), q.len());
    assert_eq!(probs.len(), hq * tokens * tokens);
    let group = hq / hkv;
    let scale = 1.0 / (dh as f32).sqrt();
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    for head in 0..hq {
        let kvh = head / group;
        for t in 0..tokens {
            let p = &probs[(head * tokens + t) * tokens..][..t + 1];
            let qo = (t * hq + head) * dh;
            let g = &dout[qo..][..dh];
            let dp: Vec<f32> = (0..=t)
                .map(|s| {
                    let vv = &v[(s * hkv + kvh) * dh..][..dh];
                    g.iter().zip(vv).map(|(a, b)| a * b).sum::<f32>()
                })
                .collect();
            let rowdot: f32 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for s in 0..=t {
                let ds = p[s] * (dp[s] - rowdot);
                let ko = (s * hkv + kvh) * dh;
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
