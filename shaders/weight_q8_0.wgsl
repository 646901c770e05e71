
// ---- weight_q8_0.wgsl: the frozen-weight seam (see weight_f32.wgsl) for ggml's Q8_0.
// Layout: 9 words per block of 32 values: word 0 = the f16 scale d (low half), words 1..9 = the 32
// signed bytes in value order (byte k of word 1 + j is value 4j + k). value = q · d, in f32 as ggml.
// CPU reference: model::weight (WeightFormat::Q8_0).

@group(0) @binding(1) var<storage, read> weight: array<u32>;

fn weight_at(i: u32) -> f32 {
    let b = (i >> 5u) * 9u;
    let d = unpack2x16float(weight[b]).x;
    let j = i & 31u;
    // Shift the byte to the top, then an arithmetic shift back sign-extends it.
    let q = bitcast<i32>(weight[b + 1u + (j >> 2u)] << (24u - 8u * (j & 3u))) >> 24u;
    return f32(q) * d;
}
