//! The training data as the page holds it (part of [`AppState`], kept apart from the rest of the
//! state): the Text / Examples switch, the examples table, a pasted or dropped JSON Lines file, the
//! answer-only switch and their counts; and what a run on examples gives the page: its held-out
//! examples (for Compare) and the adapter with the lowest validation loss so far.

use std::rc::Rc;

use leptos::prelude::*;

use super::super::format;
use super::{AppState, TrainStatus};
use crate::studio::{ExampleSet, ExampleStats, HeldOut, Run, SavedAdapter, Studio, StudioError, TrainData};
use crate::train::examples::Format;
use crate::train::{parse_examples, Record};

/// What Compare asks both models (the library's).
pub use crate::studio::Ask;

/// What the text panel trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataMode {
    #[default]
    Text,
    Examples,
}

/// One row of the examples table (its own signals, so typing in it redraws nothing else).
#[derive(Clone, Copy)]
pub struct ExampleRow {
    pub id: usize,
    pub prompt: RwSignal<String>,
    pub answer: RwSignal<String>,
}

/// The adapter with the lowest validation loss of the run so far, on the host.
#[derive(Debug, Clone)]
pub struct Best {
    pub step: usize,
    pub loss: f64,
    pub adapter: Rc<SavedAdapter>,
}

/// The examples a user gave, gathered for the engine, and what could not be used (sentences).
#[derive(Debug, Clone, PartialEq)]
pub struct Gathered {
    pub set: ExampleSet,
    /// Table rows with a prompt but no answer (or the reverse), the file's bad lines.
    pub problems: Vec<String>,
    /// Examples taken from the file.
    pub from_file: usize,
}

#[derive(Clone, Copy)]
pub struct DataForm {
    pub mode: RwSignal<DataMode>,
    pub rows: RwSignal<Vec<ExampleRow>>,
    /// JSON Lines as pasted or dropped ("" when none).
    pub jsonl: RwSignal<String>,
    /// The dropped or picked file's name ("" when pasted).
    pub file_name: RwSignal<String>,
    /// Loss on the answers only (on by default for examples).
    pub answers_only: RwSignal<bool>,
    /// The examples' counts at the current sequence length (or why they cannot train).
    pub stats: RwSignal<Option<Result<ExampleStats, String>>>,
    /// The current run's held-out examples with an answer (empty for a text).
    pub held_out: RwSignal<Vec<HeldOut>>,
    /// The run's best adapter so far (the one downloaded by default).
    pub best: RwSignal<Option<Best>, LocalStorage>,
    /// Validations since the best one (0 at it): what "Stop early" counts. Kept by the page, as
    /// its best outlives a resumed run's session.
    pub since_best: StoredValue<usize>,
    next_id: StoredValue<usize>,
}

impl DataForm {
    pub fn new() -> Self {
        let form = Self {
            mode: RwSignal::new(DataMode::Text),
            rows: RwSignal::new(Vec::new()),
            jsonl: RwSignal::new(String::new()),
            file_name: RwSignal::new(String::new()),
            answers_only: RwSignal::new(true),
            stats: RwSignal::new(None),
            held_out: RwSignal::new(Vec::new()),
            best: RwSignal::new_local(None),
            since_best: StoredValue::new(0),
            next_id: StoredValue::new(0),
        };
        form.use_pairs(super::super::examples::EXAMPLE_PAIRS.text);
        form
    }

    fn row(&self, prompt: String, answer: String) -> ExampleRow {
        let id = self.next_id.get_value();
        self.next_id.set_value(id + 1);
        ExampleRow { id, prompt: RwSignal::new(prompt), answer: RwSignal::new(answer) }
    }

    pub fn add_row(&self) {
        let row = self.row(String::new(), String::new());
        self.rows.update(|r| r.push(row));
    }

    pub fn remove_row(&self, id: usize) {
        self.rows.update(|r| r.retain(|x| x.id != id));
    }

    /// Replace the table by the prompt/completion pairs of `jsonl` (the built-in set).
    pub fn use_pairs(&self, jsonl: &str) {
        let rows = parse_examples(jsonl)
            .records
            .into_iter()
            .filter_map(|(_, r)| match r {
                Record::Completion { prompt, completion } => Some(self.row(prompt, completion)),
                _ => None,
            })
            .collect();
        self.rows.set(rows);
    }

    /// The table's rows as (prompt, answer), read untracked.
    pub fn row_values(&self) -> Vec<(String, String)> {
        self.rows.with_untracked(|rows| rows.iter().map(|r| (r.prompt.get_untracked(), r.answer.get_untracked())).collect())
    }

    /// Replace the table by `rows` of (prompt, answer).
    pub fn set_rows(&self, rows: &[(String, String)]) {
        let rows = rows.iter().map(|(p, a)| self.row(p.clone(), a.clone())).collect();
        self.rows.set(rows);
    }

    /// An empty table (two blank rows) and no file.
    pub fn clear(&self) {
        let rows = vec![self.row(String::new(), String::new()), self.row(String::new(), String::new())];
        self.rows.set(rows);
        self.jsonl.set(String::new());
        self.file_name.set(String::new());
    }

    /// The table's filled rows (as "row N", counting from 1) then the file's good examples (as
    /// "line N"), and a sentence for each row or line left out. Reads the signals (tracked).
    pub fn gather(&self) -> Gathered {
        let (mut records, mut problems) = (Vec::new(), Vec::new());
        for (i, row) in self.rows.get().iter().enumerate() {
            let (prompt, answer) = (row.prompt.get(), row.answer.get());
            match (prompt.trim().is_empty(), answer.trim().is_empty()) {
                (true, true) => {}
                (false, true) => problems.push(format!("Row {} has a prompt but no answer, so there is nothing to learn: it is left out.", i + 1)),
                (true, false) => problems.push(format!("Row {} has an answer but no prompt: it is left out.", i + 1)),
                // The plain template writes "Answer: " itself: the answer is kept as typed.
                (false, false) => records.push((format!("row {}", i + 1), Record::Completion { prompt, completion: answer })),
            }
        }
        let jsonl = self.jsonl.get();
        let mut from_file = 0;
        if !jsonl.trim().is_empty() {
            let parsed = parse_examples(&jsonl);
            if parsed.format == Format::PlainText {
                problems.push("The pasted file is not JSON Lines (one {…} example per line): switch to Text to train on plain text.".into());
            } else {
                problems.extend(parsed.bad.iter().map(format::sentence));
                from_file = parsed.records.len();
                records.extend(parsed.records.into_iter().map(|(line, r)| (format!("line {line}"), r)));
            }
        }
        Gathered { set: ExampleSet { records, answers_only: self.answers_only.get() }, problems, from_file }
    }
}

impl Default for DataForm {
    fn default() -> Self {
        Self::new()
    }
}

impl AppState {
    /// What a run trains on now: the text, or the examples (read untracked).
    pub fn train_data(&self) -> TrainData {
        match self.data.mode.get_untracked() {
            DataMode::Text => TrainData::Text(self.text.get_untracked()),
            DataMode::Examples => TrainData::Examples(untrack(|| self.data.gather().set)),
        }
    }

    /// A run became the current one: its held-out examples go to Compare, and a best adapter of
    /// another run is forgotten (`fresh`).
    pub(super) fn note_run(&self, run: &Run, fresh: bool) {
        self.data.held_out.set(run.held_out().to_vec());
        if fresh {
            self.data.best.set(None);
            self.data.since_best.set_value(0);
        }
    }

    /// The validation loss now; when it is the run's lowest so far (the engine keeps that adapter,
    /// `Studio::validate`), it becomes the best one the page downloads. The page's best outlives a
    /// resumed run's session, so it is replaced only by a lower loss.
    pub(super) async fn validate(&self, studio: &Studio, run: &mut Run) -> Result<f64, StudioError> {
        let v = studio.validate(run).await?;
        let lower = self.data.best.with_untracked(|b| b.as_ref().is_none_or(|b| v.loss < b.loss));
        let best = if v.improved && lower { studio.best(run) } else { None };
        match best {
            Some(best) => {
                self.data.best.set(Some(Best { step: v.step, loss: v.loss, adapter: Rc::new(best) }));
                self.data.since_best.set_value(0);
            }
            None => self.data.since_best.update_value(|n| *n += 1),
        }
        Ok(v.loss)
    }

    /// After a validation at `step`: the early stop, when `patience` (> 0) validations in a row
    /// have not improved on the best.
    pub(super) fn stop_early(&self, patience: usize, step: usize) -> Option<TrainStatus> {
        let since = self.data.since_best.get_value();
        let best = self.data.best.get_untracked()?;
        (patience > 0 && since >= patience).then_some(TrainStatus::StoppedEarly { step, patience, best_step: best.step, best_loss: best.loss })
    }
}
