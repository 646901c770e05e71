//! Reference for `shaders/sum_squares.wgsl`: Σ x², accumulated in f64 so that it is the better of the two.

pub fn sum_squares(x: &[f32]) -> f32 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() as f32
}
