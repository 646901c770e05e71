//! Training data: one text, tokenized once, cut into consecutive windows of `seq_len` tokens.
//!
//! Split (deterministic, no randomness): of the n = ⌊tokens / seq_len⌋ whole windows, the last
//! max(1, round(n / 10)) are held out for validation and the rest are trained on; the validation span
//! is every token from the first held-out window to the end of the text (the short tail that makes no
//! whole window included), scored with `eval`'s definition of loss (consecutive chunks of `seq_len`,
//! each on its own). Holding out the end rather than random windows keeps the validation text
//! contiguous and unseen: no training window overlaps it. Training needs n ≥ 2.
//!
//! Batches: the training windows are visited in epochs, each a fresh shuffle (Fisher–Yates with
//! [`Rng`] from the seed); a batch takes the next B windows of the current order (an epoch's last
//! short batch continues into the next epoch). The same seed gives the same batches everywhere, and
//! a sampler fast-forwarded by `skip` draws what it would have drawn next (for resuming).

use super::TrainError;
use crate::rng::Rng;

/// A tokenized text cut for training and validation.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub tokens: Vec<u32>,
    pub seq_len: usize,
    /// Whole windows the training batches draw from.
    pub train_windows: usize,
    /// Held-out whole windows (the validation span starts at `train_windows · seq_len`).
    pub validation_windows: usize,
}

impl Dataset {
    /// Cut `tokens` into windows of `seq_len` and split them; errors if fewer than two windows fit.
    pub fn new(tokens: Vec<u32>, seq_len: usize) -> Result<Self, TrainError> {
        if seq_len < 2 {
            return Err(TrainError::InvalidSetting {
                setting: "seq_len",
                message: format!("the sequence length must be at least 2 tokens, got {seq_len}"),
            });
        }
        let n = tokens.len() / seq_len;
        if n < 2 {
            return Err(TrainError::TextTooShort { tokens: tokens.len(), seq_len, needed: 2 * seq_len });
        }
        let validation_windows = ((n as f64 / 10.0).round() as usize).max(1);
        Ok(Self { seq_len, train_windows: n - validation_windows, validation_windows, tokens })
    }

    /// Training window `i` (0-based).
    pub fn window(&self, i: usize) -> &[u32] {
        &self.tokens[i * self.seq_len..(i + 1) * self.seq_len]
    }

    /// Every training token (the whole windows before the validation span).
    pub fn train_tokens(&self) -> &[u32] {
        &self.tokens[..self.train_windows * self.seq_len]
    }

    /// The held-out tokens, from the first validation window to the end of the text.
    pub fn validation_tokens(&self) -> &[u32] {
        &self.tokens[self.train_windows * self.seq_len..]
    }

    /// A batch sampler over the training windows.
    pub fn sampler(&self, seed: u64) -> Sampler {
        Sampler { rng: Rng::new(seed), order: Vec::new(), next: 0, windows: self.train_windows }
    }
}

/// Draws batches of training windows: epochs of shuffled window indices.
#[derive(Debug, Clone)]
pub struct Sampler {
    rng: Rng,
    order: Vec<usize>,
    next: usize,
    windows: usize,
}

impl Sampler {
    /// The next window index.
    pub fn next_window(&mut self) -> usize {
        if self.next == self.order.len() {
            self.order = (0..self.windows).collect();
            for i in (1..self.order.len()).rev() {
                let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
                self.order.swap(i, j);
            }
            self.next = 0;
        }
        self.next += 1;
        self.order[self.next - 1]
    }

    /// The next `batch` windows' tokens, back to back ([batch · seq_len]).
    pub fn next_batch(&mut self, data: &Dataset, batch: usize) -> Vec<u32> {
        (0..batch).flat_map(|_| data.window(self.next_window()).to_vec()).collect()
    }

    /// Skip `windows` windows (what `windows / batch` batches would have drawn).
    pub fn skip(&mut self, windows: usize) {
        for _ in 0..windows {
            self.next_window();
        }
    }
}
