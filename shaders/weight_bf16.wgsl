
// ---- weight_bf16.wgsl: the frozen-weight seam (see weight_f32.wgsl) for bfloat16.
// Layout: word i/2 holds values 2j (low half) and 2j+1 (high half); a bf16 is the top 16 bits of
// an f32, so decoding is a shift. CPU reference: model::weight (WeightFormat::Bf16).

@group(0) @binding(1) var<storage, read> weight: array<u32>;

fn weight_at(i: u32) -> f32 {
    let w = weight[i >> 1u];
    return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u));
}

// The same buffer seen as word pairs (as weight_f32.wgsl's weight4): one load for four values.
@group(0) @binding(1) var<storage, read> weight2: array<vec2<u32>>;

// i a multiple of 4: one word pair, low half first.
fn weight_at4(i: u32) -> vec4<f32> {
    let p = weight2[i >> 2u];
    let w = vec4<u32>(p.x, p.x, p.y, p.y);
    return bitcast<vec4<f32>>(select(w << vec4<u32>(16u), w & vec4<u32>(0xffff0000u), vec4<bool>(false, true, false, true)));
}
