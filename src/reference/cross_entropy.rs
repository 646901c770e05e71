//! Reference for `shaders/cross_entropy.wgsl`: per row of logits [T, V] with target ids [T],
//! loss[t] = logsumexp(logits[t]) − logits[t, target[t]] (natural log, numerically stable).

pub fn cross_entropy(logits: &[f32], vocab: usize, targets: &[u32]) -> Vec<f32> {
    logits
        .chunks(vocab)
        .zip(targets)
        .map(|(row, &target)| {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
            max + sum.ln() - row[target as usize]
        })
        .collect()
}

/// A target id that marks a row as ignored (padding, the last position of a sequence): no loss,
/// no gradient.
pub const IGNORE: u32 = u32::MAX;

/// Backward of the summed loss `scale · Σ_r loss[r]`:
///   dlogits[r] = scale · (softmax(logits[r]) − onehot(targets[r])),
/// all zeros for a row whose target is [`IGNORE`] (or any other id ≥ vocab, like the forward kernel,
/// which gives such a row a loss of 0).
pub fn cross_entropy_backward(logits: &[f32], vocab: usize, targets: &[u32], scale: f32) -> Vec<f32> {
    let mut d = vec![0.0; logits.len()];
    for ((row, &target), dr) in logits.chunks(vocab).zip(targets).zip(d.chunks_mut(vocab)) {
        if target as usize >= vocab {
            continue;
        }
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
        for (j, (o, &l)) in dr.iter_mut().zip(row).enumerate() {
            let onehot = if j == target as usize { 1.0 } else { 0.0 };
            *o = scale * ((l - max).exp() / sum - onehot);
        }
    }
    d
}
