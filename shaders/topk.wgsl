// topk: the k first of `logits` [n] in the order "larger value first, lower id on ties", as ids and
// values: out[r] = id of the r-th, out[k + r] = its value's bits (r < k). What sampling needs, so
// that a generated token reads back 4 bytes (greedy, k = 1) or 8·k bytes (top-k) instead of [n].
//
// Two comparisons, as the CPU sampler (src/generate.rs) makes them:
//   total = 0: IEEE `>` (greedy's argmax: the first maximum, -0.0 and 0.0 equal);
//   total = 1: f32::total_cmp (top-k's stable sort: ids kept in order among bit-equal values), via
//              the bits as an i32 with the magnitude bits flipped for negatives.
// NaN logits (a broken model) may pick differently from the CPU.
//
// Dispatch: one workgroup of THREADS threads (the vocabulary is read k times: k ≤ 64 and n ~ 10⁴–10⁵).
// Round r: each thread takes the first, among values i ≡ thread (mod THREADS) that come after the
// pick of round r − 1, then a tree reduction in workgroup memory leaves the round's pick in slot 0.
// THREADS (override, a power of two ≤ 256): 256, or 32 on a CPU device, where each barrier switches
// every invocation of the workgroup and the tree's 8 levels of 256 cost more than the scan.

struct Params {
    n: u32,
    k: u32,
    total: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;

override THREADS: u32 = 256u;
const NONE: u32 = 0xffffffffu;

var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

fn ordered(v: f32) -> i32 {
    let b = bitcast<i32>(v);
    return select(b, b ^ 0x7fffffff, b < 0);
}

// Whether (va, ia) comes before (vb, ib); NONE (no candidate) comes after everything.
fn before(va: f32, ia: u32, vb: f32, ib: u32) -> bool {
    if (ia == NONE) {
        return false;
    }
    if (ib == NONE) {
        return true;
    }
    if (p.total == 1u) {
        let ka = ordered(va);
        let kb = ordered(vb);
        return ka > kb || (ka == kb && ia < ib);
    }
    return va > vb || (va == vb && ia < ib);
}

@compute @workgroup_size(THREADS, 1, 1)
fn main(@builtin(local_invocation_index) tid: u32) {
    var prev_v = 0.0;
    var prev_i = NONE;
    for (var r = 0u; r < p.k; r++) {
        var bv = 0.0;
        var bi = NONE;
        for (var i = tid; i < p.n; i += THREADS) {
            let v = logits[i];
            if ((prev_i == NONE || before(prev_v, prev_i, v, i)) && before(v, i, bv, bi)) {
                bv = v;
                bi = i;
            }
        }
        best_v[tid] = bv;
        best_i[tid] = bi;
        workgroupBarrier();
        for (var s = THREADS / 2u; s > 0u; s >>= 1u) {
            if (tid < s && before(best_v[tid + s], best_i[tid + s], best_v[tid], best_i[tid])) {
                best_v[tid] = best_v[tid + s];
                best_i[tid] = best_i[tid + s];
            }
            workgroupBarrier();
        }
        prev_v = best_v[0];
        prev_i = best_i[0];
        if (tid == 0u) {
            out[r] = prev_i;
            out[p.k + r] = bitcast<u32>(prev_v);
        }
        // Every thread has read slot 0 before the next round overwrites it.
        workgroupBarrier();
    }
}
