//! Reference for `shaders/adamw.wgsl`: one AdamW step with `torch.optim.AdamW`'s semantics
//! (decoupled weight decay, bias-corrected moments, eps added to the corrected √v), step t ≥ 1:
//!   g ← g · grad_scale
//!   p ← p · (1 − lr·wd)
//!   m ← β1·m + (1 − β1)·g
//!   v ← β2·v + (1 − β2)·g²
//!   p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + eps)
//! The last line is PyTorch's own arrangement (step_size = lr / bias_correction1, denominator
//! √v / √bias_correction2 + eps), equal to p − lr·m̂/(√v̂ + eps) with m̂ = m/(1−β1^t), v̂ = v/(1−β2^t).
//! All or nothing over the tensors of one step: if any new value is ±∞ or NaN, none is written.

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

/// One tensor AdamW updates in place: parameter, gradient, first and second moments (same length).
pub struct Slot<'a> {
    pub p: &'a mut [f32],
    pub g: &'a [f32],
    pub m: &'a mut [f32],
    pub v: &'a mut [f32],
}

/// Element `i`'s new (parameter, m, v), in the kernel's order of operations.
fn updated(t: &Slot, i: usize, s: &StepScalars, grad_scale: f32) -> (f32, f32, f32) {
    let grad = t.g[i] * grad_scale;
    let m = s.beta1 * t.m[i] + s.one_minus_beta1 * grad;
    let v = s.beta2 * t.v[i] + s.one_minus_beta2 * grad * grad;
    let denom = v.sqrt() / s.bias_correction2_sqrt + s.eps;
    (t.p[i] * s.decay - s.step_size * (m / denom), m, v)
}

/// One AdamW step on every slot with gradient `g · grad_scale`, all or nothing: when any new
/// parameter or moment of any slot would be ±∞ or NaN (a learning rate so large the update
/// overflows), nothing is written and the step returns false.
pub fn adamw_step(slots: &mut [Slot], opt: &AdamW, step: u32, grad_scale: f32) -> bool {
    let s = opt.scalars(step);
    for t in slots.iter() {
        assert!(t.p.len() == t.g.len() && t.p.len() == t.m.len() && t.p.len() == t.v.len());
    }
    let finite = |(p, m, v): (f32, f32, f32)| p.is_finite() && m.is_finite() && v.is_finite();
    if !slots.iter().all(|t| (0..t.p.len()).all(|i| finite(updated(t, i, &s, grad_scale)))) {
        return false;
    }
    for t in slots.iter_mut() {
        for i in 0..t.p.len() {
            (t.p[i], t.m[i], t.v[i]) = updated(t, i, &s, grad_scale);
        }
    }
    true
}
