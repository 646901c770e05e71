
// ---- weight_f32.wgsl: the frozen-weight format seam, f32 edition. Appended by the launchers of the
// kernels that read a weight matrix (matmul's B operand, the embedding table), which read it only
// through `weight_at`; no other code in those kernels names the binding. Not an op of its own.
//   weight                  binding 1 of group 0: the weight's storage, here row-major f32 values
//   weight_at(i) -> f32     the weight's i-th value (flat row-major index) as f32
//   weight_at4(i) -> vec4   values i, i+1, i+2, i+3 for i a multiple of 4 (one load or one word's
//                           worth of decoding, where weight_at would do four); the caller keeps the
//                           four inside the weight (matvec.wgsl's aligned path)
// Another storage format (f16, bf16, Q8_0, Q4_0, Q4_1) is another file beside this one declaring the
// same binding over its packed words (e.g. array<u32>) and a `weight_at` that decodes value i from its
// block, composed by the launcher instead of this one, with the same dequantization on the CPU side
// (the reference) so the GPU can be checked against it.

@group(0) @binding(1) var<storage, read> weight: array<f32>;

fn weight_at(i: u32) -> f32 {
    return weight[i];
}

// The same buffer seen as vec4s: one (bounds-checked) load for four values. Only an entry point that
// calls weight_at4 and not weight_at uses it, so no entry point binds both views of binding 1.
@group(0) @binding(1) var<storage, read> weight4: array<vec4<f32>>;

fn weight_at4(i: u32) -> vec4<f32> {
    return weight4[i >> 2u];
}
