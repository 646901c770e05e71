//! The run kept across reloads: at every validation point and on Stop the page writes the text
//! panel (Text or Examples, the text, the examples table, a pasted file, the answer-only switch),
//! the settings, the loss history, the model it was trained on and the adapter with its
//! AdamW state and step to the browser's storage ([`super::storage`]); a page that finds one offers
//! "Resume where you left off", which loads the same model (the default or the served SmolLM2
//! again; a model from disk is asked for), puts the adapter back and trains on exactly as an
//! unbroken run would. Storage problems are sentences and never stop training.

use std::rc::Rc;

use leptos::prelude::*;
use leptos::task::spawn_local;
use serde::{Deserialize, Serialize};

use super::state::{AppState, DataMode, LossPoint, ModelStatus, SettingsForm, DEFAULT_MODEL, SMOLLM2_FILE};
use super::storage::{Storage, StorageError};
use crate::lora::Target;
use crate::model::WeightFormat;
use crate::studio::SavedAdapter;
use crate::train::TrainSettings;

/// The text panel's content: the Text / Examples switch, the text, and the examples. Every field
/// has a serde default, so runs saved before examples were kept still load (as text runs, leaving
/// the examples table as it is).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataPanel {
    #[serde(default)]
    pub mode: DataMode,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub examples: Option<ExamplesPanel>,
}

/// The Examples side as the user left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExamplesPanel {
    /// The table's (prompt, answer) rows, blank ones included.
    #[serde(default)]
    pub rows: Vec<(String, String)>,
    /// The pasted or dropped JSON Lines, and the file's name ("" when pasted).
    #[serde(default)]
    pub jsonl: String,
    #[serde(default)]
    pub file_name: String,
    /// Loss on the answers only.
    #[serde(default = "answers_only_default")]
    pub answers_only: bool,
}

fn answers_only_default() -> bool {
    true
}

/// The settings as typed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormValues {
    pub rank: String,
    pub alpha: String,
    pub targets: Vec<String>,
    pub lr: String,
    pub steps: String,
    pub batch: String,
    pub seq_len: String,
    pub seed: String,
    #[serde(default)]
    pub grad_checkpoint: bool,
    /// "Stop early after N validations" ("" off).
    #[serde(default)]
    pub early_stop: String,
}

impl FormValues {
    fn read(f: &SettingsForm) -> Self {
        Self {
            rank: f.rank.get_untracked(),
            alpha: f.alpha.get_untracked(),
            targets: f.targets.get_untracked().iter().map(|t| t.name().to_string()).collect(),
            lr: f.lr.get_untracked(),
            steps: f.steps.get_untracked(),
            batch: f.batch.get_untracked(),
            seq_len: f.seq_len.get_untracked(),
            seed: f.seed.get_untracked(),
            grad_checkpoint: f.grad_checkpoint.get_untracked(),
            early_stop: f.early_stop.get_untracked(),
        }
    }

    fn write(&self, f: &SettingsForm) {
        f.rank.set(self.rank.clone());
        f.alpha.set(self.alpha.clone());
        f.targets.set(self.targets.iter().filter_map(|t| Target::parse(t).ok()).collect());
        f.lr.set(self.lr.clone());
        f.steps.set(self.steps.clone());
        f.batch.set(self.batch.clone());
        f.seq_len.set(self.seq_len.clone());
        f.seed.set(self.seed.clone());
        f.grad_checkpoint.set(self.grad_checkpoint);
        f.early_stop.set(self.early_stop.clone());
    }
}

/// Where the model came from, which decides how a Resume gets it back.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ModelKind {
    /// The model shipped with the page.
    Default,
    /// SmolLM2, served next to the page.
    Served,
    /// Chosen or dropped from the user's disk: it must be chosen again.
    Dropped,
}

/// Everything of a run but the adapter, as JSON in the stored record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// When it was saved, ms since the Unix epoch.
    pub saved_at: f64,
    pub model: String,
    pub kind: ModelKind,
    /// The frozen weights' format chosen at load ("" as stored).
    pub frozen: String,
    pub data: DataPanel,
    pub form: FormValues,
    /// (step, training loss, validation loss) of the chart.
    pub points: Vec<(usize, Option<f32>, Option<f64>)>,
    pub step: usize,
    pub total: usize,
}

/// A run found in storage: its description and its adapter zip (with training_state.safetensors).
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub meta: RunMeta,
    pub adapter: Vec<u8>,
}

/// What the run was started with: restored as they were, whatever is typed after the start.
#[derive(Debug, Clone, PartialEq)]
struct Inputs {
    data: DataPanel,
    form: FormValues,
}

/// The persistence part of the page's state.
#[derive(Clone, Copy)]
pub struct Persist {
    /// This tab's storage (None: not opened, or not available; component tests keep nothing).
    pub storage: StoredValue<Option<Rc<Storage>>, LocalStorage>,
    /// The run found at load, offered until Resume, Start over or a new run.
    pub offer: RwSignal<Option<Rc<Offer>>, LocalStorage>,
    /// An offered run waiting for its model from disk.
    pending: StoredValue<Option<Rc<Offer>>, LocalStorage>,
    /// A sentence about keeping the run (storage missing or full, another tab, a model to choose).
    pub note: RwSignal<Option<String>>,
    /// The step and time (ms since the epoch) of the last save.
    pub saved: RwSignal<Option<(usize, f64)>>,
    inputs: StoredValue<Option<Inputs>>,
    /// The next save takes the record over from another tab's (set by a new run or a Resume here).
    take_over: StoredValue<bool>,
}

impl Persist {
    pub fn new() -> Self {
        Self {
            storage: StoredValue::new_local(None),
            offer: RwSignal::new_local(None),
            pending: StoredValue::new_local(None),
            note: RwSignal::new(None),
            saved: RwSignal::new(None),
            inputs: StoredValue::new(None),
            take_over: StoredValue::new(true),
        }
    }
}

impl Default for Persist {
    fn default() -> Self {
        Self::new()
    }
}

fn now() -> f64 {
    js_sys::Date::now()
}

/// "just now", "2 minutes ago", "3 hours ago", "5 days ago".
fn ago(ms: f64) -> String {
    let (s, plural) = ((ms / 1000.0).max(0.0) as u64, |n: u64, unit: &str| format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" }));
    match s {
        s if s < 60 => "just now".into(),
        s if s < 3600 => plural(s / 60, "minute"),
        s if s < 86_400 => plural(s / 3600, "hour"),
        s => plural(s / 86_400, "day"),
    }
}

impl AppState {
    /// The text panel as it is now.
    fn data_panel(&self) -> DataPanel {
        let d = &self.data;
        let examples = ExamplesPanel {
            rows: d.row_values(),
            jsonl: d.jsonl.get_untracked(),
            file_name: d.file_name.get_untracked(),
            answers_only: d.answers_only.get_untracked(),
        };
        DataPanel { mode: d.mode.get_untracked(), text: self.text.get_untracked(), examples: Some(examples) }
    }

    fn set_data_panel(&self, panel: &DataPanel) {
        self.text.set(panel.text.clone());
        let d = &self.data;
        if let Some(e) = &panel.examples {
            d.set_rows(&e.rows);
            d.jsonl.set(e.jsonl.clone());
            d.file_name.set(e.file_name.clone());
            d.answers_only.set(e.answers_only);
        }
        d.mode.set(panel.mode);
    }

    /// Open the browser's storage and offer the run found there (the page calls this once at load).
    pub async fn open_storage(self) {
        match Storage::open().await {
            Ok(storage) => {
                let found = storage.load().await;
                self.persist.storage.set_value(Some(Rc::new(storage)));
                match found {
                    Ok(Some(record)) => match serde_json::from_str::<RunMeta>(&record.meta) {
                        Ok(meta) => self.persist.offer.set(Some(Rc::new(Offer { meta, adapter: record.adapter }))),
                        Err(e) => self.persist.note.set(Some(format!("The run saved in this browser cannot be read ({e}); a new run replaces it."))),
                    },
                    Ok(None) => {}
                    Err(e) => self.persist.note.set(Some(e.to_string())),
                }
            }
            Err(e) => self.persist.note.set(Some(e.to_string())),
        }
    }

    /// A new run starts (or an adapter is put on the GPU): remember what it was started with, and
    /// let its first save take the stored record over.
    pub(super) fn run_begins(&self) {
        self.persist.inputs.set_value(Some(Inputs { data: self.data_panel(), form: FormValues::read(&self.form) }));
        self.persist.take_over.set_value(true);
        self.persist.offer.set(None);
    }

    /// Write the run as of `self.saved` to the browser's storage; a problem becomes the note's
    /// sentence and never reaches training.
    pub(super) async fn persist_run(&self) {
        let Some(storage) = self.persist.storage.get_value() else { return };
        let (Some(saved), Some(studio)) = (self.saved.get_untracked(), self.studio.get_untracked()) else { return };
        let inputs = self.persist.inputs.get_value().unwrap_or_else(|| Inputs { data: self.data_panel(), form: FormValues::read(&self.form) });
        let name = studio.info.name.clone();
        let kind = match name.as_str() {
            DEFAULT_MODEL => ModelKind::Default,
            SMOLLM2_FILE => ModelKind::Served,
            _ => ModelKind::Dropped,
        };
        let step = saved.step();
        let meta = RunMeta {
            saved_at: now(),
            model: name,
            kind,
            frozen: studio.frozen().map(|f| f.to_string()).unwrap_or_default(),
            data: inputs.data,
            form: inputs.form,
            points: self.points.get_untracked().iter().filter(|p| p.step <= step).map(|p| (p.step, p.train, p.val)).collect(),
            step,
            total: self.total_steps.get_untracked().max(step),
        };
        let result = match (serde_json::to_string(&meta), saved.zip()) {
            (Ok(json), Ok(zip)) => storage.save(&json, &zip, self.persist.take_over.get_value()).await,
            (Err(e), _) => Err(StorageError::Failed(e.to_string())),
            (_, Err(e)) => Err(StorageError::Failed(e.to_string())),
        };
        match result {
            Ok(()) => {
                self.persist.take_over.set_value(false);
                self.persist.saved.set(Some((step, meta.saved_at)));
                self.persist.note.set(None);
            }
            Err(e) => self.persist.note.set(Some(e.to_string())),
        }
    }

    /// "Start over": forget the stored run.
    pub async fn start_over(self) {
        self.persist.offer.set(None);
        self.persist.pending.set_value(None);
        self.persist.saved.set(None);
        if let Some(storage) = self.persist.storage.get_value() {
            let cleared = storage.clear().await;
            self.persist.note.set(cleared.err().map(|e| e.to_string()));
        }
    }

    /// "Resume": the stored run's text and settings, its model, its adapter on the GPU, and
    /// training on from its step.
    pub async fn resume_saved(self) {
        let Some(offer) = self.persist.offer.get_untracked() else { return };
        self.persist.offer.set(None);
        self.set_data_panel(&offer.meta.data);
        offer.meta.form.write(&self.form);
        self.frozen.set(offer.meta.frozen.clone());
        let frozen = WeightFormat::parse(&offer.meta.frozen);
        let loaded = self.studio.get_untracked().is_some_and(|s| s.info.name == offer.meta.model && s.frozen() == frozen);
        if !loaded {
            match offer.meta.kind {
                ModelKind::Default => self.load_default().await,
                ModelKind::Served => self.load_smollm2().await,
                ModelKind::Dropped => {
                    self.persist.note.set(Some(format!(
                        "This run was trained on {}, a model from your disk: choose or drop it again under “1. Model”, and the run is put back.",
                        offer.meta.model
                    )));
                    self.persist.pending.set_value(Some(offer));
                    return;
                }
            }
        }
        self.restore(offer).await;
    }

    /// After a model loads: put back a run that was waiting for it.
    pub(super) async fn model_loaded(self) {
        let named = self.studio.get_untracked().map(|s| s.info.name.clone());
        let Some(offer) = self.persist.pending.get_value() else { return };
        if named.as_deref() == Some(offer.meta.model.as_str()) {
            self.persist.pending.set_value(None);
            self.persist.note.set(None);
            self.restore(offer).await;
        }
    }

    /// Put the stored adapter on the loaded model and train on.
    async fn restore(self, offer: Rc<Offer>) {
        // The model failed to load: its own sentence says why.
        let Some(studio) = self.studio.get_untracked() else { return };
        let parsed = SavedAdapter::from_files(vec![("run.zip".into(), offer.adapter.clone())])
            .map_err(|e| e.to_string())
            .and_then(|saved| Ok((saved, self.form.parse(studio.config())?.1)));
        let (saved, settings) = match parsed {
            Ok(p) => p,
            Err(e) => return self.persist.note.set(Some(format!("The saved run cannot be put back: {e}. Start over to clear it."))),
        };
        if !self.claim("restoring the saved run") {
            return;
        }
        let steps = offer.meta.total.max(saved.step());
        // The data as the run had it (set back by `resume_saved`): the same split and batches.
        let data = self.train_data();
        let run = studio.load_adapter_on(&data, &saved, TrainSettings { steps, ..settings }).await;
        self.release();
        match run {
            Ok(run) => {
                self.run_begins();
                self.persist.inputs.set_value(Some(Inputs { data: offer.meta.data.clone(), form: offer.meta.form.clone() }));
                self.persist.saved.set(Some((saved.step(), offer.meta.saved_at)));
                self.saved.set(Some(Rc::new(saved)));
                let points = offer.meta.points.iter().map(|&(step, train, val)| LossPoint { step, train, val }).collect();
                let done = self.adopt(run, steps, points);
                if done < steps {
                    self.train(false);
                }
            }
            Err(e) => {
                self.persist.note.set(Some(format!("The saved run could not be put back on the GPU: {e}.")));
                self.gpu_failed(&e);
            }
        }
    }
}

/// The offer of a stored run, and the sentence about keeping runs (both absent most of the time).
#[component]
pub fn SavedRun() -> impl IntoView {
    let state = AppState::get();
    let p = state.persist;
    // Not while the default model is still loading (its fetch comes before it claims the GPU).
    let busy = move || state.busy.get().is_some() || matches!(state.model_status.get(), ModelStatus::Loading(_));
    let offer = move || {
        p.offer.get().map(|o| {
            let m = &o.meta;
            let line = format!("Resume where you left off: step {} of {}, saved {}.", m.step, m.total, ago(now() - m.saved_at));
            let about = format!("{}, rank {}, learning rate {}, {} loss points.", m.model, m.form.rank, m.form.lr, m.points.len());
            view! {
                <div class="restore" role="region" aria-label="Saved run" data-testid="restore" data-step=m.step data-total=m.total>
                    <p>{line}</p>
                    <p class="hint">{about}</p>
                    <div class="buttons">
                        <button type="button" data-testid="restore-resume" prop:disabled=busy
                            on:click=move |_| spawn_local(state.resume_saved())>"Resume"</button>
                        <button type="button" data-testid="restore-start-over" on:click=move |_| spawn_local(state.start_over())>"Start over"</button>
                    </div>
                </div>
            }
        })
    };
    let note = move || p.note.get().map(|n| view! { <p class="hint" data-testid="storage-note" role="status">{n}</p> });
    view! { {offer} {note} }
}

/// "Saved in this browser at step N", under the training controls.
#[component]
pub fn SavedNote() -> impl IntoView {
    let p = AppState::get().persist;
    move || {
        p.saved.get().map(|(step, _)| {
            view! { <p class="hint" data-testid="saved-note" data-step=step>{format!("Kept in this browser as of step {step}; a reload offers to resume from there.")}</p> }
        })
    }
}
