//! Instruction examples in the studio: what a run trains on ([`TrainData`]: a text, or examples
//! rendered with the model's chat template), their statistics for the page, and the held-out
//! examples' prompts and expected answers for Compare.
//!
//! The template is the model's own (tokenizer_config.json's `chat_template`, which a GGUF's
//! `tokenizer.chat_template` becomes on import) or, for a model without one (the default
//! austen-5m), [`PLAIN_TEMPLATE`] with the model's end-of-sequence token, so answers end with EOS
//! and generation can stop there.

use serde_json::Value as Json;

use super::{Run, Studio, StudioError};
use crate::generate::Sampling;
use crate::model::Tokenizer;
use crate::train::{ChatTemplate, Dataset, Example, Message, Record, Role, PLAIN_TEMPLATE};

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
}

/// The first end-of-sequence id config.json names (`eos_token_id`: a number or a list).
fn config_eos(config_json: &str) -> Option<u32> {
    let v: Json = serde_json::from_str(config_json).ok()?;
    let eos = v.get("eos_token_id")?;
    let id = eos.as_u64().or_else(|| eos.as_array()?.first()?.as_u64())?;
    u32::try_from(id).ok()
}

/// The template a model trains and answers with: its own from `tokenizer_config`, else the plain
/// one ending answers with config.json's EOS token. Err: the model's template is not valid Jinja
/// (a sentence; the model itself still loads and trains on text).
pub(super) fn model_template(tokenizer_config: Option<&Json>, config_json: &str, tokenizer: &Tokenizer) -> Result<ChatTemplate, String> {
    if let Some(config) = tokenizer_config {
        if let Some(t) = ChatTemplate::from_tokenizer_config(config).map_err(|e| e.to_string())? {
            return Ok(t);
        }
    }
    let eos = config_eos(config_json).and_then(|id| tokenizer.decode(&[id]).ok()).filter(|t| !t.is_empty());
    Ok(ChatTemplate::plain(eos))
}

/// `e` with every token learnt (answer-only loss off).
fn learn_all(e: Example) -> Example {
    Example { labels: e.ids.clone(), ids: e.ids }
}

impl Studio {
    /// The chat template examples are rendered with (see the module comment), or why there is none.
    pub fn chat_template(&self) -> Result<&ChatTemplate, StudioError> {
        self.template.as_ref().map_err(|e| StudioError::Files(format!("{e}; train on text instead")))
    }

    /// True when the template is the model's own, false for the plain one.
    pub fn has_own_template(&self) -> bool {
        self.template.as_ref().is_ok_and(|t| t.source != PLAIN_TEMPLATE)
    }

    /// `set` rendered, tokenized and split at `seq_len` (examples the template refuses are left
    /// out and named in `failed`).
    pub(super) fn prepare_examples(&self, set: &ExampleSet, seq_len: usize) -> Result<Prepared, StudioError> {
        let template = self.chat_template()?;
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
        let held = data.examples.as_ref().map(|x| x.held_out.clone()).unwrap_or_default();
        let held_out = held.iter().filter_map(|&i| HeldOut::of(used[i])).collect();
        Ok(Prepared { data, held_out, failed })
    }

    /// `data` as a dataset cut at `seq_len` (a text tokenized and windowed, or examples rendered).
    pub(super) fn prepare(&self, data: &TrainData, seq_len: usize) -> Result<Prepared, StudioError> {
        match data {
            TrainData::Text(text) => {
                let data = Dataset::new(self.tokenize(text)?, seq_len)?;
                Ok(Prepared { data, held_out: Vec::new(), failed: Vec::new() })
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

    /// The model's answer to `context` (rendered with the generation prompt, as
    /// [`Studio::chat_prompt`]), with `adapter` when given. The answer ends where the template ends
    /// one (its end-of-sequence token, such as `<|endoftext|>` or `<|im_end|>`), which is not part
    /// of it.
    pub async fn answer(&self, context: &[Message], max_tokens: usize, sampling: &Sampling, adapter: Option<&Run>) -> Result<String, StudioError> {
        let prompt = self.chat_prompt(context)?;
        let mut text = self.generate(&prompt, max_tokens, sampling, adapter).await?;
        if let Some(end) = self.chat_template()?.eos_token.as_deref().and_then(|eos| text.find(eos)) {
            text.truncate(end);
        }
        Ok(text.trim().to_string())
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
