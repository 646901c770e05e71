//! Reference for `shaders/scale.wgsl`: c = s · a.

pub fn scale(s: f32, a: &[f32]) -> Vec<f32> {
    a.iter().map(|x| s * x).collect()
}
