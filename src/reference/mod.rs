//! Plain-Rust f32 reference of every op: slow, obvious, and the oracle the GPU tests compare against.
//! One module per op, named like its shader and its launcher.

pub mod adamw;
pub mod add;
pub mod attention;
pub mod cross_entropy;
pub mod dropout;
pub mod embedding;
pub mod gelu;
pub mod layernorm;
pub mod matmul;
pub mod matvec_pair;
pub mod matvec_qkv;
pub mod model;
pub mod rmsnorm;
pub mod residual_norm;
pub mod rope;
pub mod scale;
pub mod silu_mul;
pub mod sum_squares;
