//! Reference for `shaders/adamw.wgsl`: one AdamW step with `torch.optim.AdamW`'s semantics
//! (decoupled weight decay, bias-corrected moments, eps added to the corrected √v), step t ≥ 1:
//!   g ← g · grad_scale
//!   p ← p · (1 − lr·wd)
//!   m ← β1·m + (1 − β1)·g
//!   v ← β2·v + (1 − β2)·g²
//!   p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + eps)
//! The last line is PyTorch's own arrangement (step_size = lr / bias_correction1, denominator
//! √v / √bias_correction2 + eps), equal to p − lr·m̂/(√v̂ + eps) with m̂ = m/(1−β1^t), v̂ = v/(1−β2^t).

/// AdamW hyper-parameters; `Default` is PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// The per-step scalars, computed in f64 and rounded to f32 once (as PyTorch computes them in Python
/// floats); the reference and the GPU kernel both use exactly these.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepScalars {
    /// 1 − lr·wd
    pub decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// 1 − β1, 1 − β2
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    /// lr / (1 − β1^t)
    pub step_size: f32,
    /// √(1 − β2^t)
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
}

impl AdamW {
    /// The scalars of step `step` (≥ 1; panics on 0).
    pub fn scalars(&self, step: u32) -> StepScalars {
        assert!(step >= 1, "AdamW steps count from 1");
        let (lr, b1, b2) = (self.lr as f64, self.beta1 as f64, self.beta2 as f64);
        let bc1 = 1.0 - b1.powi(step as i32);
        let bc2 = 1.0 - b2.powi(step as i32);
        StepScalars {
            decay: (1.0 - lr * self.weight_decay as f64) as f32,
            beta1: self.beta1,
            beta2: self.beta2,
            one_minus_beta1: (1.0 - b1) as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            step_size: (lr / bc1) as f32,
            bias_correction2_sqrt: bc2.sqrt() as f32,
            eps: self.eps,
        }
    }
}

/// One AdamW step on `p` with gradient `g · grad_scale`, updating the moments `m` and `v` in place.
pub fn adamw_step(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    opt: &AdamW,
    step: u32,
    grad_scale: f32,
) {
    assert!(p.len() == g.len() && p.len() == m.len() && p.len() == v.len());
    let s = opt.scalars(step);
    for i in 0..p.len() {
        let grad = g[i] * grad_scale;
        let mut param = p[i] * s.decay;
        m[i] = s.beta1 * m[i] + s.one_minus_beta1 * grad;
        v[i] = s.beta2 * v[i] + s.one_minus_beta2 * grad * grad;
        let denom = v[i].sqrt() / s.bias_correction2_sqrt + s.eps;
        param -= s.step_size * (m[i] / denom);
        p[i] = param;
    }
}
