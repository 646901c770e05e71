// rope: rotary position embedding, in place, Hugging Face's "rotate half" convention.
// x is [tokens, heads, head_dim]; token t sits at position pos0 + t. For i < half = head_dim / 2,
// with inv_freq_i = 1 / theta^(2i / head_dim) and a = f32(position) · inv_freq_i:
//   x'[i]        = x[i] · cos a − x[i + half] · sin a
//   x'[i + half] = x[i + half] · cos a + x[i] · sin a
// (an odd head_dim leaves its last value untouched, as the reference does).
//
// The angles' cosines and sines come from the launcher, computed on the CPU in f32 exactly like the
// reference (as transformers caches cos/sin): WGSL only promises sin/cos to ~2^-11 absolute, and
// software WebGPU (SwiftShader) is that coarse, which moved a small Llama's logits by 2e-3.
// Layout: x [tokens · heads · head_dim] f32, read and written in place; cos_sin [tokens · half] vec2.
// Dispatch: one thread per (token, head, i) pair, n = tokens · heads · half, 256 threads per
// workgroup over a 2-D grid (x ≤ the per-dimension limit, spilling into y).

struct Params {
    n: u32,
    half: u32,
    head_dim: u32,
    heads: u32,
    pos0: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;
// (cos a, sin a) for token t and frequency i at cos_sin[t · half + i], computed on the CPU.
@group(0) @binding(2) var<storage, read> cos_sin: array<vec2<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let j = gid.y * groups.x * 256u + gid.x;
    if (j >= p.n) {
        return;
    }
    let i = j % p.half;
    let th = j / p.half;              // token · heads + head
    let t = th / p.heads;
    let base = th * p.head_dim;

    let cs = cos_sin[t * p.half + i];
    let c = cs.x;
    let s = cs.y;

    let x0 = x[base + i];
    let x1 = x[base + i + p.half];
    x[base + i] = x0 * c - x1 * s;
    x[base + i + p.half] = x1 * c + x0 * s;
}
