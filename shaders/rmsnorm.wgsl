// rmsnorm: per row r of x [rows, dim]: y = x · 1/sqrt(Σ x² / dim + eps) · weight   (Llama's RMSNorm)
//
// Layout: x, y [rows, dim] f32 row-major; weight [dim].
// Dispatch: one workgroup of WG threads per row (any dim: threads stride over the row; WG is the
// override of shaders/workgroup_reduce.wgsl, set by gpu::row_workgroup); the grid is
// 2-D (x ≤ the per-dimension limit, spilling into y) and the row index is rebuilt from num_workgroups.

struct Params { rows: u32, dim: u32, eps: f32, _pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

// workgroup_sum / workgroup_max / workgroup_sum2 and `scratch`: shaders/workgroup_reduce.wgsl.

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let row = wid.y * groups.x + wid.x;
    if (row >= p.rows) {
        return; // uniform per workgroup: the whole group leaves together
    }
    let base = row * p.dim;
    let t = lid.x;

    var q = 0.0;
    for (var i = t; i < p.dim; i += WG) {
        let v = x[base + i];
        q = fma(v, v, q);
    }
    let rstd = 1.0 / sqrt(workgroup_sum(t, q) / f32(p.dim) + p.eps);

    for (var i = t; i < p.dim; i += WG) {
        y[base + i] = x[base + i] * rstd * weight[i];
    }
}
