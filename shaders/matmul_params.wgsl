// ---- matmul_params.wgsl: the uniform and bindings shared by matmul.wgsl and matvec.wgsl (their
// launchers compose this file after the kernel; src/gpu/matmul.rs writes the same Params). Not an op
// of its own; the kernels state the semantics of each field.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    has_bias: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    alpha: f32,
    beta: f32,
    ldc: u32,
    c_offset: u32,
    bias_offset: u32,
    lda: u32,
    a_offset: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
// binding 1: B, the `weight` of weight_<format>.wgsl, read only through weight_at
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;
