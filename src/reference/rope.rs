//! Reference for `shaders/rope.wgsl`: rotary position embedding in Hugging Face's "rotate half"
//! convention. x is [tokens, heads, head_dim]; token t sits at position pos0 + t. For i < half =
//! head_dim / 2, with θ_i = theta^(−2i / head_dim) and a = position · θ_i:
//!   x'[i]        = x[i] · cos a − x[i + half] · sin a
//!   x'[i + half] = x[i + half] · cos a + x[i] · sin a

pub fn inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect()
}

pub fn rope(x: &mut [f32], heads: usize, head_dim: usize, pos0: usize, theta: f32) {
    let half = head_dim / 2;
    let freqs = inv_freq(head_dim, theta);
    for (t, token) in x.chunks_mut(heads * head_dim).enumerate() {
        let pos = (pos0 + t) as f32;
        for head in token.chunks_mut(head_dim) {
            for i in 0..half {
                let (sin, cos) = (pos * freqs[i]).sin_cos();
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos - b * sin;
                head[i + half] = b * cos + a * sin;
            }
        }
    }
}

/// Backward of [`rope`], in place like the forward: the rotation is orthogonal, so the gradient is
/// rotated back by −a (same frequencies, same f32 angles):
///   dx[i]        = dy[i] · cos a + dy[i + half] · sin a
///   dx[i + half] = dy[i + half] · cos a − dy[i] · sin a
pub fn rope_backward(dy: &mut [f32], heads: usize, head_dim: usize, pos0: usize, theta: f32) {
    let half = head_dim / 2;
    let freqs = inv_freq(head_dim, theta);
    for (t, token) in dy.chunks_mut(heads * head_dim).enumerate() {
        let pos = (pos0 + t) as f32;
        for head in token.chunks_mut(head_dim) {
            for i in 0..half {
                let (sin, cos) = (pos * freqs[i]).sin_cos();
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos + b * sin;
                head[i + half] = b * cos - a * sin;
            }
        }
    }
}
