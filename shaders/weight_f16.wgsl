
// ---- weight_f16.wgsl: the frozen-weight seam (see weight_f32.wgsl) for IEEE half precision.
// Layout: word i/2 holds values 2j (low half) and 2j+1 (high half); unpack2x16float is core WGSL,
// so no optional feature is needed. CPU reference: model::weight (WeightFormat::F16).

@group(0) @binding(1) var<storage, read> weight: array<u32>;

fn weight_at(i: u32) -> f32 {
    return unpack2x16float(weight[i >> 1u])[i & 1u];
}

// The same buffer seen as word pairs (as weight_f32.wgsl's weight4): one load for four values.
@group(0) @binding(1) var<storage, read> weight2: array<vec2<u32>>;

// i a multiple of 4: one word pair.
fn weight_at4(i: u32) -> vec4<f32> {
    let w = weight2[i >> 2u];
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}
