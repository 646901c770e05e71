// rmsnorm_backward: the gradient of rmsnorm with respect to x (weight is frozen).
// Per row r of x [rows, dim], recomputing the forward's rstd = 1/sqrt(Σ x² / dim + eps):
//   g = dy ⊙ weight
//   dx = rstd · g − x · rstd³ · (Σ g ⊙ x) / dim
//
// Layout: x, dy, dx [rows, dim] f32 row-major; weight [dim].
// Dispatch: one workgroup of WG threads per row (any dim: threads stride over the row; WG is the
// override of shaders/workgroup_reduce.wgsl, set by gpu::row_workgroup); the grid is
// 2-D (x ≤ the per-dimension limit, spilling into y) and the row index is rebuilt from num_workgroups.
// One workgroup reduction computes Σ x² and Σ g·x together (vec2).

struct Params { rows: u32, dim: u32, eps: f32, _pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

// workgroup_sum / workgroup_max / workgroup_sum2 and `scratch`: shaders/workgroup_reduce.wgsl.

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let row = wid.y * groups.x + wid.x;
    if (row >= p.rows) {
        return; // uniform per workgroup
    }
    let base = row * p.dim;
    let t = lid.x;
    let n = f32(p.dim);

    var acc = vec2<f32>(0.0, 0.0);
    for (var i = t; i < p.dim; i += WG) {
        let v = x[base + i];
        acc += vec2<f32>(v * v, dy[base + i] * weight[i] * v);
    }
    let sums = workgroup_sum2(t, acc);
    let rstd = 1.0 / sqrt(sums.x / n + p.eps);
    let c = rstd * rstd * rstd * (sums.y / n);

    for (var i = t; i < p.dim; i += WG) {
        dx[base + i] = rstd * (dy[base + i] * weight[i]) - x[base + i] * c;
    }
}
