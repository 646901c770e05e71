//! Reference for `shaders/matmul.wgsl`: C[b] = alpha · op(A[b])·op(B[b]) + beta · C[b] + bias,
//! with C a block of `ldc`-wide rows starting at `c_offset` (see `ops::Matmul`).

use crate::ops::Matmul;

pub fn matmul(spec: &Matmul, a: &[f32], b: &[f32], bias: Option<&[f32]>, c: &mut [f32]) {
    let Matmul { m, n, k, layout, batch, shared_b, alpha, beta, ldc, c_offset, bias_offset, lda, a_offset } = *spec;
    assert!(a.len() >= spec.a_len() && b.len() >= spec.b_len() && c.len() >= spec.c_len());
    for bt in 0..batch {
        let a = &a[a_offset + bt * m * lda..];
        let b = if shared_b { b } else { &b[bt * k * n..] };
        let c = &mut c[c_offset + bt * m * ldc..];
        for i in 0..m {
            for j in 0..n {
                let mut sum = 0.0f32;
                for p in 0..k {
                    let av = if layout.trans_a() { a[p * m + i] } else { a[i * lda + p] };
                    let bv = if layout.trans_b() { b[j * k + p] } else { b[p * n + j] };
                    sum += av * bv;
                }
                let mut v = alpha * sum;
                if beta != 0.0 {
                    v += beta * c[i * ldc + j];
                }
                if let Some(bias) = bias {
                    v += bias[bias_offset + j];
                }
                c[i * ldc + j] = v;
            }
        }
    }
}
