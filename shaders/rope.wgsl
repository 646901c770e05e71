// rope: rotary position embedding, in place, Hugging Face's "rotate half" convention, forward
// (sign = +1) and backward (sign = −1) in one kernel.
// x is [tokens, heads, head_dim]; token t sits at position pos0 + t. For i < half = head_dim / 2,
// with inv_freq_i = 1 / theta^(2i / head_dim), a = f32(position) · inv_freq_i and s = sign · sin a:
//   x'[i]        = x[i] · cos a − x[i + half] · s
//   x'[i + half] = x[i + half] · cos a + x[i] · s
// (an odd head_dim leaves its last value untouched, as the reference does). The rotation is
// orthogonal, so the backward (the gradient dy in x, overwritten with dx) is the rotation by −a:
// sign = −1, i.e. dx[i] = dy[i]·cos a + dy[i + half]·sin a, dx[i + half] = dy[i + half]·cos a − dy[i]·sin a.
// sign · sin a is exact for sign = ±1, so each direction computes what a kernel of its own would.
//
// The angles' cosines and sines come from the launcher, computed on the CPU in f32 exactly like the
// reference (as transformers caches cos/sin): WGSL only promises sin/cos to ~2^-11 absolute, and
// software WebGPU (SwiftShader) is that coarse, which moved a small Llama's logits by 2e-3.
// Layout: x [tokens · heads · head_dim] f32, read and written in place; cos_sin [tokens · half] vec2.
// Entry `main_pair` rotates a second tensor y [tokens · heads_y · head_dim] (k beside q) with the
// same table in the same dispatch: one dispatch less per layer, which is most of a small op's cost on
// a software GPU (a dispatch costs ~35 µs on lavapipe's thread pool).
// Dispatch: one thread per (token, head, i) pair, n = tokens · (heads + heads_y) · half (heads_y = 0
// for `main`), WORKGROUP threads per workgroup over a 2-D grid (x ≤ the per-dimension limit, spilling
// into y; flat_index in prelude_1d.wgsl); threads j < n_x = tokens · heads · half rotate x, the rest y.

struct Params {
    n: u32,
    half: u32,
    head_dim: u32,
    heads: u32,
    pos0: u32,    // informational: the table already holds the positions' angles
    sign: f32,    // +1 forward, −1 backward
    n_x: u32,     // x's pairs (= n for `main`)
    heads_y: u32, // y's heads (`main_pair`)
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
// (cos a, sin a) for token t and frequency i at cos_sin[t · half + i], computed on the CPU.
@group(0) @binding(1) var<storage, read> cos_sin: array<vec2<f32>>;
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// Pair i of head h of token t in a tensor of `heads` heads: where it sits (its first value's index)
// and its (cos a, sign · sin a).
struct Pair {
    base: u32,
    c: f32,
    s: f32,
}

fn pair(j: u32, heads: u32) -> Pair {
    let i = j % p.half;
    let th = j / p.half;              // token · heads + head
    let cs = cos_sin[(th / heads) * p.half + i];
    return Pair(th * p.head_dim + i, cs.x, p.sign * cs.y);
}

// (v0, v1) = (x[i], x[i + half]) rotated.
fn turned(v0: f32, v1: f32, r: Pair) -> vec2<f32> {
    return vec2<f32>(v0 * r.c - v1 * r.s, v1 * r.c + v0 * r.s);
}

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let j = flat_index(gid, groups);
    if (j >= p.n) {
        return;
    }
    let r = pair(j, p.heads);
    let v = turned(x[r.base], x[r.base + p.half], r);
    x[r.base] = v.x;
    x[r.base + p.half] = v.y;
}

@compute @workgroup_size(WORKGROUP)
fn main_pair(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let j = flat_index(gid, groups);
    if (j >= p.n) {
        return;
    }
    if (j < p.n_x) {
        let r = pair(j, p.heads);
        let v = turned(x[r.base], x[r.base + p.half], r);
        x[r.base] = v.x;
        x[r.base + p.half] = v.y;
        return;
    }
    let r = pair(j - p.n_x, p.heads_y);
    let v = turned(y[r.base], y[r.base + p.half], r);
    y[r.base] = v.x;
    y[r.base + p.half] = v.y;
}
