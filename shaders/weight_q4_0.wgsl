
// ---- weight_q4_0.wgsl: the frozen-weight seam (see weight_f32.wgsl) for ggml's Q4_0.
// Layout: 5 words per block of 32 values: word 0 = the f16 scale d (low half), words 1..5 = the 32
// 4-bit quants in value order (nibble k of word 1 + j is value 8j + k). value = (q − 8) · d.
// CPU reference: model::weight (WeightFormat::Q4_0).

@group(0) @binding(1) var<storage, read> weight: array<u32>;

fn weight_at(i: u32) -> f32 {
    let b = (i >> 5u) * 5u;
    let d = unpack2x16float(weight[b]).x;
    let j = i & 31u;
    let q = (weight[b + 1u + (j >> 3u)] >> (4u * (j & 7u))) & 0xfu;
    return (f32(q) - 8.0) * d;
}

// i a multiple of 4: four nibbles of one word.
fn weight_at4(i: u32) -> vec4<f32> {
    let b = (i >> 5u) * 5u;
    let d = unpack2x16float(weight[b]).x;
    let j = i & 31u;
    let q = (vec4<u32>(weight[b + 1u + (j >> 3u)] >> (4u * (j & 7u))) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(0xfu);
    return (vec4<f32>(q) - 8.0) * d;
}
