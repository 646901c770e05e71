// dropout: out[i] = beta·out[i] + keep(i) · x[i] / (1 − p) for i < n   (f32; LoRA's lora_dropout)
//
// keep(i) = pcg(i ^ pcg(seed)) ≥ threshold, threshold = ⌊p·2³²⌋: each element is kept with
// probability 1 − p, and the same (seed, i) always gives the same mask, so the backward regenerates
// the forward's mask instead of storing it. pcg is the PCG-RXS-M-XS hash (Jarzynski & Olano 2020);
// `reference::dropout` computes the identical integers on the CPU.
//
// Layout: two flat arrays of n floats (x [rows, in] row-major: i = row·in + col). Dispatch: WORKGROUP
// threads per workgroup over a 2-D grid (x ≤ the per-dimension limit, spilling into y).
// beta = 0 overwrites out (never reading it: it may hold anything); beta = 1 accumulates.

struct Params { n: u32, seed: u32, threshold: u32, scale: f32, beta: f32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= p.n) {
        return;
    }
    var acc = 0.0;
    if (p.beta != 0.0) {
        acc = p.beta * out[i];
    }
    if (pcg(i ^ pcg(p.seed)) >= p.threshold) {
        acc += x[i] * p.scale;
    }
    out[i] = acc;
}
