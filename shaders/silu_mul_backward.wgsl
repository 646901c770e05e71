// silu_mul_backward: the gradients of out = silu(gate) · up, for i < n:
//   σ = 1 / (1 + e^−g),  silu(g) = g·σ,  silu'(g) = σ·(1 + g·(1 − σ))
//   dgate[i] = dout[i] · up[i] · silu'(gate[i]),   dup[i] = dout[i] · silu(gate[i])
// σ uses e^−g for g ≥ 0 and e^g / (1 + e^g) for g < 0, so the exponential only ever underflows:
// no inf or NaN for any finite g.
// Layout: gate, up, dout, dgate, dup [n] f32. Dispatch: WORKGROUP threads per workgroup over a 2-D grid
// (x ≤ the per-dimension limit, spilling into y); the flat index is flat_index (prelude_1d.wgsl).

struct Params { n: u32 }

@group(0) @binding(0) var<storage, read> gate: array<f32>;
@group(0) @binding(1) var<storage, read> up: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read_write> dgate: array<f32>;
@group(0) @binding(4) var<storage, read_write> dup: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

fn sigmoid(g: f32) -> f32 {
    if (g >= 0.0) {
        return 1.0 / (1.0 + exp(-g));
    }
    let e = exp(g);
    return e / (1.0 + e);
}

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i < p.n) {
        let g = gate[i];
        let d = dout[i];
        let s = sigmoid(g);
        dgate[i] = d * up[i] * (s * (1.0 + g * (1.0 - s)));
        dup[i] = d * (g * s);
    }
}
