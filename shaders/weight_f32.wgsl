
// ---- weight_f32.wgsl: the frozen-weight format seam, f32 edition. Appended by the launchers of the
// kernels that read a weight matrix (matmul's B operand, the embedding table), which read it only
// through `weight_at`; no other code in those kernels names the binding. Not an op of its own.
//   weight                  binding 1 of group 0: the weight's storage, here row-major f32 values
//   weight_at(i) -> f32     the weight's i-th value (flat row-major index) as f32
// Another storage format (f16, bf16, Q8_0, Q4_0, Q4_1) is another file beside this one declaring the
// same binding over its packed words (e.g. array<u32>) and a `weight_at` that decodes value i from its
// block, composed by the launcher instead of this one, with the same dequantization on the CPU side
// (the reference) so the GPU can be checked against it.

@group(0) @binding(1) var<storage, read> weight: array<f32>;

fn weight_at(i: u32) -> f32 {
    return weight[i];
}
