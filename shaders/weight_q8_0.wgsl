
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

// i a multiple of 4: the four bytes of one word, sign-extended as above.
fn weight_at4(i: u32) -> vec4<f32> {
    let b = (i >> 5u) * 9u;
    let d = unpack2x16float(weight[b]).x;
    let w = weight[b + 1u + ((i & 31u) >> 2u)];
    let q = bitcast<vec4<i32>>(vec4<u32>(w) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
    return vec4<f32>(q) * d;
}
