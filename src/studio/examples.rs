//! Instruction examples in the studio: what a run trains on ([`TrainData`]: a text, or examples
//! rendered with the model's chat template), their statistics for the page, and the held-out
//! examples' prompts and expected answers for Compare.
//!
//! The template is [`Studio::chat_template`]: the model's own (tokenizer_config.json's
//! `chat_template`, which a GGUF's `tokenizer.chat_template` becomes on import) or, for a model
//! without one (the default austen-5m), the plain one ending each answer with the model's EOS, so
//! answers end where generation stops.

use super::{ModelSource, Run, SavedAdapter, Studio, StudioError};
use crate::generate::Sampling;
use crate::train::{self, DataRecord, Dataset, Example, Kind, Message, Record, Role, TrainSettings};

/// What a run trains on.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainData {
    /// One text cut into windows (the last tenth held out).
    Text(String),
    /// Examples rendered with the model's chat template, split by example.
    Examples(ExampleSet),
}

/// Examples as the user gave them, each with where it came from ("row 2", "line 7"), and whether
/// the loss counts the answers only.
#[derive(Debug, Clone, PartialEq)]
pub struct ExampleSet {
    pub records: Vec<(String, Record)>,
    /// Prompt, system and user tokens get label −100 (TRL's completion-only loss, MLX-LM's
    /// `--mask-prompt`); off: every token is learnt.
    pub answers_only: bool,
}

/// A held-out example for Compare: the conversation before its last answer, and that answer.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldOut {
    pub context: Vec<Message>,
    pub expected: String,
}

impl HeldOut {
    /// The conversation up to its last answer (None for a document, which has no answer).
    pub fn of(record: &Record) -> Option<Self> {
        let messages = record.messages()?;
        let last = messages.iter().rposition(|m| m.role == Role::Assistant)?;
        Some(Self { expected: messages[last].content.clone(), context: messages[..last].to_vec() })
    }

    /// The user's last message (what Compare shows as the question).
    pub fn question(&self) -> &str {
        self.context.iter().rev().find(|m| m.role == Role::User).map_or("", |m| m.content.as_str())
    }
}

/// Counts for the page's examples panel at one sequence length.
#[derive(Debug, Clone, PartialEq)]
pub struct ExampleStats {
    /// Examples used (train + validation).
    pub examples: usize,
    pub train: usize,
    pub validation: usize,
    /// Tokens of the used examples after truncation.
    pub tokens: usize,
    /// Positions whose next token is learnt (the answers' tokens with answer-only loss).
    pub learnt: usize,
    /// Examples longer than the sequence length, cut to it.
    pub truncated: usize,
    /// Examples with nothing left to learn within the sequence length, not used.
    pub dropped: usize,
    /// Examples the template could not render, each as a sentence naming it.
    pub failed: Vec<String>,
}

/// A dataset made for a run, with what Compare needs of its held-out examples.
pub(super) struct Prepared {
    pub data: Dataset,
    pub held_out: Vec<HeldOut>,
    pub failed: Vec<String>,
    pub record: DataRecord,
}

/// `e` with every token learnt (answer-only loss off).
fn learn_all(e: Example) -> Example {
    Example { labels: e.ids.clone(), ids: e.ids }
}

impl Studio {
    /// True when the model has a chat template of its own, false when examples use the plain one.
    pub fn has_own_template(&self) -> bool {
        self.chat_template().is_ok_and(|t| !t.is_plain())
    }

    /// `set` rendered, tokenized and split at `seq_len` (examples the template refuses are left
    /// out and named in `failed`).
    pub(super) fn prepare_examples(&self, set: &ExampleSet, seq_len: usize) -> Result<Prepared, StudioError> {
        let template = &self.chat_template()?;
        let (mut examples, mut used, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for (origin, record) in &set.records {
            match template.example(&self.tokenizer, record) {
                Ok(e) => {
                    examples.push(if set.answers_only { e } else { learn_all(e) });
                    used.push(record);
                }
                Err(e) => failed.push(format!("{origin}: {e}")),
            }
        }
        let data = Dataset::from_examples(examples, seq_len)?;
        let held = data.examples.as_ref().map(|x| x.validation_from.clone()).unwrap_or_default();
        let held_out = held.iter().filter_map(|&i| HeldOut::of(used[i])).collect();
        let record = DataRecord::examples(Kind::of(set.records.iter().map(|(_, r)| r)), template, set.answers_only, seq_len);
        Ok(Prepared { data, held_out, failed, record })
    }

    /// `data` as a dataset cut at `seq_len` (a text tokenized and windowed, or examples rendered).
    pub(super) fn prepare(&self, data: &TrainData, seq_len: usize) -> Result<Prepared, StudioError> {
        match data {
            TrainData::Text(text) => {
                let data = Dataset::new(self.tokenize(text)?, seq_len)?;
                let record = DataRecord::text(seq_len);
                Ok(Prepared { data, held_out: Vec::new(), failed: Vec::new(), record })
            }
            TrainData::Examples(set) => self.prepare_examples(set, seq_len),
        }
    }

    /// The examples panel's counts for `set` at `seq_len`; an error when there are not two usable
    /// examples (one to train on, one to validate on).
    pub fn example_stats(&self, set: &ExampleSet, seq_len: usize) -> Result<ExampleStats, StudioError> {
        let Prepared { data, failed, .. } = self.prepare_examples(set, seq_len)?;
        let ex = data.examples.expect("examples make an examples dataset");
        let all = || ex.train.iter().chain(&ex.validation);
        Ok(ExampleStats {
            examples: ex.train.len() + ex.validation.len(),
            train: ex.train.len(),
            validation: ex.validation.len(),
            tokens: all().map(|e| e.ids.len()).sum(),
            learnt: all().map(Example::targets).sum(),
            truncated: ex.truncated,
            dropped: ex.dropped,
            failed,
        })
    }

    /// The text a model is prompted with to answer `context` as the assistant: the template's
    /// rendering with the generation prompt (`Question: …\nAnswer:` for the plain template).
    pub fn chat_prompt(&self, context: &[Message]) -> Result<String, StudioError> {
        Ok(self.chat_template()?.render(context, true)?)
    }

    /// The model's answer to `context` (the ids of [`Studio::chat_prompt`], as transformers'
    /// `apply_chat_template(…, add_generation_prompt=True)` gives them), with `adapter` when given;
    /// it ends at the model's EOS or end-of-turn token, which is not part of it.
    pub async fn answer(&self, context: &[Message], max_tokens: usize, sampling: &Sampling, adapter: Option<&Run>) -> Result<String, StudioError> {
        let ids = self.chat_ids(context)?;
        self.generate_ids(ids, max_tokens, sampling, adapter).await
    }
}

/// A model folder this small is put into a TRL export whole (under `base/`), so the export runs
/// as it is; a larger one is named and the user points the script at it.
const EXPORT_BASE_LIMIT: usize = 64 << 20;

impl Studio {
    /// A zip of the run written for TRL's SFTTrainer + PEFT (`train::trl_export`: the split
    /// examples, the sampler's order, `adapter` as the starting point, `train_trl.py` with the same
    /// template, masking and settings), with the base model's files under `base/` when it is a
    /// small model folder (the default model's 11 MB).
    pub fn trl_export_zip(&self, set: &ExampleSet, adapter: &SavedAdapter, settings: &TrainSettings) -> Result<Vec<u8>, StudioError> {
        let records: Vec<(usize, Record)> = set.records.iter().enumerate().map(|(i, (_, r))| (i + 1, r.clone())).collect();
        let frozen = adapter.state.as_ref().map(|s| s.frozen.clone()).unwrap_or_default();
        let base: Vec<(String, &[u8])> = match self.source() {
            ModelSource::Files(f) if f.weights.iter().map(|(_, w)| w.len()).sum::<usize>() <= EXPORT_BASE_LIMIT => {
                let mut files = vec![("config.json".to_string(), f.config.as_bytes()), ("tokenizer.json".into(), f.tokenizer.as_slice())];
                files.extend(f.weights.iter().map(|(n, w)| (n.clone(), w.as_slice())));
                files.extend(f.tokenizer_config.as_ref().map(|t| ("tokenizer_config.json".into(), t.as_bytes())));
                files.extend(f.generation_config.as_ref().map(|g| ("generation_config.json".into(), g.as_bytes())));
                files
            }
            _ => Vec::new(),
        };
        let base_model = if base.is_empty() { self.info.name.clone() } else { "base".into() };
        let run = train::TrlRun {
            records: &records,
            template: &self.chat_template()?,
            answers_only: set.answers_only,
            adapter: &adapter.adapter,
            settings,
            base_model: &base_model,
            frozen_rows: &train::frozen_rows(self.config(), &adapter.adapter, &frozen),
        };
        let files = train::trl_export(&self.tokenizer, &run)?;
        let base = base.iter().map(|(n, b)| (format!("base/{n}"), *b));
        let all: Vec<(String, &[u8])> = files.iter().map(|f| (f.name.clone(), f.bytes.as_slice())).chain(base).collect();
        let named: Vec<(&str, &[u8])> = all.iter().map(|(n, b)| (n.as_str(), *b)).collect();
        Ok(crate::zip::store(&named)?)
    }
}

impl Run {
    /// The held-out examples with an answer (for Compare); empty for a text.
    pub fn held_out(&self) -> &[HeldOut] {
        &self.held_out
    }

    /// True when the run trains on examples.
    pub fn on_examples(&self) -> bool {
        self.session.data.examples.is_some()
    }
}
