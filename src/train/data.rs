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
//!
//! Examples ([`Dataset::from_examples`], instruction tuning): each example is one window of its own,
//! truncated to `seq_len` (counted in [`Examples::truncated`]) and right-padded with id 0 whose labels
//! are ignored (attention is causal, so padding after an example cannot change it). An example with
//! nothing left to learn after truncation is dropped and counted. Split by example, with no
//! randomness: v = max(1, round(n / 10)) examples spread evenly through the file (example
//! ⌊(j + ½)·n / v⌋ for j < v) are held out, so a file sorted by topic is still validated on every
//! part of it. The windows the sampler draws are then the training examples.

use super::TrainError;
use crate::reference::cross_entropy::IGNORE;
use crate::rng::Rng;

fn check_seq_len(seq_len: usize) -> Result<(), TrainError> {
    if seq_len < 2 {
        return Err(TrainError::InvalidSetting {
            setting: "seq_len",
            message: format!("the sequence length must be at least 2 tokens, got {seq_len}"),
        });
    }
    Ok(())
}

/// A tokenized text cut for training and validation, or a set of examples.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The text's tokens; for examples, every example's ids back to back (training ones first).
    pub tokens: Vec<u32>,
    pub seq_len: usize,
    /// Whole windows the training batches draw from (for examples: training examples).
    pub train_windows: usize,
    /// Held-out whole windows (the validation span starts at `train_windows · seq_len`); for
    /// examples, held-out examples.
    pub validation_windows: usize,
    /// Instruction examples (None: a plain text).
    pub examples: Option<Examples>,
}

/// One training example: token ids and, per position, the label the loss predicts there from
/// the tokens before it (transformers' `labels`: the id itself, or [`IGNORE`] where not learnt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub labels: Vec<u32>,
}

impl Example {
    /// The same example learnt whole (every label its id: the loss on prompts too, MLX-LM without
    /// --mask-prompt).
    pub fn unmasked(self) -> Self {
        Self { labels: self.ids.clone(), ids: self.ids }
    }

    /// Positions whose next token is learnt (the first label predicts nothing).
    pub fn targets(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE).count()
    }
}

/// A [`Dataset`]'s examples after truncation and the split.
#[derive(Debug, Clone)]
pub struct Examples {
    pub train: Vec<Example>,
    pub validation: Vec<Example>,
    /// Examples longer than `seq_len`, cut to it.
    pub truncated: usize,
    /// Examples with no learnt token left (after truncation), not used.
    pub dropped: usize,
    /// Where each of `train` and `validation` was in the list given to
    /// [`Dataset::from_examples`] (for writing the same split out, `train::export`).
    pub train_from: Vec<usize>,
    pub validation_from: Vec<usize>,
}

/// `examples` (each at most `seq_len` long) as one batch of `batch` windows of `seq_len`: ids and
/// labels right-padded with id 0 and [`IGNORE`]; missing windows are all padding.
pub fn pad_batch(examples: &[&Example], batch: usize, seq_len: usize) -> (Vec<u32>, Vec<u32>) {
    let mut ids = vec![0; batch * seq_len];
    let mut labels = vec![IGNORE; batch * seq_len];
    for (w, e) in examples.iter().enumerate() {
        ids[w * seq_len..w * seq_len + e.ids.len()].copy_from_slice(&e.ids);
        labels[w * seq_len..w * seq_len + e.labels.len()].copy_from_slice(&e.labels);
    }
    (ids, labels)
}

impl Dataset {
    /// Cut `tokens` into windows of `seq_len` and split them; errors if fewer than two windows fit.
    pub fn new(tokens: Vec<u32>, seq_len: usize) -> Result<Self, TrainError> {
        check_seq_len(seq_len)?;
        let n = tokens.len() / seq_len;
        if n < 2 {
            return Err(TrainError::TextTooShort { tokens: tokens.len(), seq_len, needed: 2 * seq_len });
        }
        let validation_windows = ((n as f64 / 10.0).round() as usize).max(1);
        Ok(Self { seq_len, train_windows: n - validation_windows, validation_windows, tokens, examples: None })
    }

    /// Examples cut to `seq_len` and split (see the module comment); errors unless at least one
    /// example is left to train on and one to validate on.
    pub fn from_examples(examples: Vec<Example>, seq_len: usize) -> Result<Self, TrainError> {
        check_seq_len(seq_len)?;
        let (mut kept, mut truncated, mut dropped) = (Vec::new(), 0, 0);
        let mut origin = Vec::new();
        for (i, mut e) in examples.into_iter().enumerate() {
            assert_eq!(e.ids.len(), e.labels.len(), "an example has one label per id");
            if e.ids.len() > seq_len {
                e.ids.truncate(seq_len);
                e.labels.truncate(seq_len);
                truncated += 1;
            }
            if e.targets() == 0 {
                dropped += 1;
            } else {
                kept.push(e);
                origin.push(i);
            }
        }
        let n = kept.len();
        if n < 2 {
            return Err(TrainError::TooFewExamples { usable: n, dropped });
        }
        let v = ((n as f64 / 10.0).round() as usize).max(1);
        let held: Vec<usize> = (0..v).map(|j| ((2 * j + 1) * n) / (2 * v)).collect();
        let (mut train, mut validation, mut train_from, mut validation_from) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, (e, from)) in kept.into_iter().zip(origin).enumerate() {
            if held.contains(&i) {
                validation.push(e);
                validation_from.push(from);
            } else {
                train.push(e);
                train_from.push(from);
            }
        }
        let tokens = train.iter().chain(&validation).flat_map(|e| e.ids.iter().copied()).collect();
        let examples = Examples { train, validation, truncated, dropped, train_from, validation_from };
        Ok(Self { tokens, seq_len, train_windows: n - v, validation_windows: v, examples: Some(examples) })
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

    /// The next batch's tokens and, for examples, their padded labels (None for a text, whose
    /// labels are its tokens).
    pub fn next_labeled_batch(&mut self, data: &Dataset, batch: usize) -> (Vec<u32>, Option<Vec<u32>>) {
        let Some(ex) = &data.examples else {
            return (self.next_batch(data, batch), None);
        };
        let picked: Vec<&Example> = (0..batch).map(|_| &ex.train[self.next_window()]).collect();
        let (ids, labels) = pad_batch(&picked, batch, data.seq_len);
        (ids, Some(labels))
    }

    /// Skip `windows` windows (what `windows / batch` batches would have drawn).
    pub fn skip(&mut self, windows: usize) {
        for _ in 0..windows {
            self.next_window();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(len: usize, prompt: usize) -> Example {
        let ids: Vec<u32> = (1..=len as u32).collect();
        let labels = ids.iter().enumerate().map(|(i, &id)| if i < prompt { IGNORE } else { id }).collect();
        Example { ids, labels }
    }

    #[test]
    fn examples_are_truncated_dropped_and_split_evenly() {
        // 21 usable examples (one truncated), one with nothing to learn, one learnt only past seq_len.
        let mut all: Vec<Example> = (0..20).map(|i| example(3 + i % 4, 2)).collect();
        all.push(example(12, 3));
        all.push(example(5, 5));
        all.push(example(12, 9));
        let d = Dataset::from_examples(all, 8).unwrap();
        let ex = d.examples.as_ref().unwrap();
        assert_eq!((ex.truncated, ex.dropped), (2, 2));
        assert_eq!((d.train_windows, d.validation_windows), (19, 2));
        assert_eq!((ex.train.len(), ex.validation.len()), (19, 2));
        // Held out: examples ⌊(2j + 1)·21 / 4⌋ = 5 and 15.
        assert_eq!(ex.validation, [example(3 + 5 % 4, 2), example(3 + 15 % 4, 2)]);
        // Inputs 21 and 22 are dropped, so the kept ones are inputs 0..=20 in order.
        assert_eq!(ex.validation_from, [5, 15]);
        assert_eq!(ex.train_from, (0..21).filter(|i| ![5, 15].contains(i)).collect::<Vec<_>>());
        // The origins index what was given, dropped examples included: of 4 usable examples after
        // a dropped one, usable example ⌊4 / 2⌋ = 2 is held out, given as index 3.
        let mut shifted = vec![example(5, 5)];
        shifted.extend((0..4).map(|i| example(3 + i, 1)));
        let after_drop = Dataset::from_examples(shifted, 8).unwrap().examples.unwrap();
        assert_eq!((after_drop.validation_from, after_drop.validation), (vec![3], vec![example(5, 1)]));
        assert!(ex.train.iter().all(|e| e.ids.len() <= 8 && e.targets() > 0));
        assert_eq!(d.tokens.len(), ex.train.iter().chain(&ex.validation).map(|e| e.ids.len()).sum::<usize>());

        let (ids, labels) = d.sampler(3).next_labeled_batch(&d, 3);
        let (ids, labels) = (ids, labels.unwrap());
        assert_eq!((ids.len(), labels.len()), (24, 24));
        for w in 0..3 {
            let row = &labels[w * 8..(w + 1) * 8];
            let len = ids[w * 8..(w + 1) * 8].iter().take_while(|&&id| id != 0).count();
            assert!(row[len..].iter().all(|&l| l == IGNORE), "padding is not learnt");
            let window = &ids[w * 8..w * 8 + len];
            assert!(row[..2].iter().all(|&l| l == IGNORE) && row[..len].iter().zip(window).all(|(&l, &id)| l == IGNORE || l == id));
            assert!(row[len - 1] != IGNORE, "every example ends learnt");
        }
        let err = Dataset::from_examples(vec![example(4, 1), example(4, 4)], 8).unwrap_err();
        assert!(matches!(err, TrainError::TooFewExamples { usable: 1, dropped: 1 }), "{err}");
    }
}
