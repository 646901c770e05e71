//! Plain-Rust f32 reference of every op: slow, obvious, and the oracle the GPU tests compare against.
//! One module per op, named like its shader and its launcher.

pub mod add;
pub mod matmul;
pub mod scale;
pub mod sum_squares;
