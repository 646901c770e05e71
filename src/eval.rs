//! `loratab eval`'s definition of loss, shared by the CLI, the web app and validation during
//! training: the text is tokenized once (no special tokens), cut into consecutive chunks of
//! `seq_len` tokens (the last, shorter chunk counts if it has ≥ 2 tokens), each chunk is scored on
//! its own, and `loss` is the mean next-token cross-entropy over every predicted position.

use crate::gpu::GpuContext;
use crate::model::{GpuModel, ModelError};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct EvalResult {
    pub loss: f64,
    pub ppl: f64,
    /// Predicted positions.
    pub tokens: usize,
}

/// Default chunk length: the model's context, at most 1024.
pub fn default_seq_len(max_positions: usize) -> usize {
    max_positions.min(1024)
}

/// The chunks `eval` scores.
pub fn chunks(tokens: &[u32], seq_len: usize) -> impl Iterator<Item = &[u32]> {
    tokens.chunks(seq_len.max(2)).filter(|c| c.len() >= 2)
}

pub async fn eval(ctx: &GpuContext, model: &GpuModel, tokens: &[u32], seq_len: usize) -> Result<EvalResult, ModelError> {
    if seq_len < 2 || seq_len > model.config.max_positions {
        return Err(ModelError::Config(format!(
            "a sequence length of {seq_len} is outside 2..={} (the model's context)",
            model.config.max_positions
        )));
    }
    let (mut sum, mut count) = (0.0, 0);
    for chunk in chunks(tokens, seq_len) {
        let (s, n) = model.loss_sum(ctx, chunk).await?;
        sum += s;
        count += n;
    }
    if count == 0 {
        return Err(ModelError::EmptyText);
    }
    let loss = sum / count as f64;
    Ok(EvalResult { loss, ppl: loss.exp(), tokens: count })
}
