//! The page's state (signals shared by every component through Leptos context) and the actions
//! that drive the engine: load a model, train step by step with yields to the browser, compare,
//! snapshot the adapter. Only [`crate::studio`] touches the GPU; this module only calls it.
//!
//! Nothing the user typed or trained lives in the engine alone: the text and the settings are
//! signals, and after every validation point the adapter is copied to the host ([`SavedAdapter`]),
//! so a failed step, a lost device or a failed model load leaves them in place.

use std::rc::Rc;

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::persist::Persist;
use super::{browser, format};
use crate::generate::Sampling;
use crate::gpu::GpuError;
use crate::lora::{LoraOptions, Target};
use crate::model::{Config, ModelFiles, WeightFormat};
use crate::studio::{Compared, ModelSource, Profiled, Run, SavedAdapter, Studio, StudioError, TextStats};
use crate::train::TrainSettings;

mod data;
pub use data::{Ask, Best, DataForm, DataMode, ExampleRow, Gathered};

/// The model the page loads with no user action, shipped next to the page by Trunk.
pub const DEFAULT_MODEL: &str = "austen-5m";

/// The second model offered: a GGUF that `./dev setup` downloads into web/models/ (git-ignored, so
/// it may be absent), served from the same origin and fetched only when the user picks it.
pub const SMOLLM2_FILE: &str = "smollm2-135m-instruct-q4_1.gguf";

#[derive(Debug, Clone, PartialEq)]
pub enum ModelStatus {
    Loading(String),
    Ready,
    Failed(String),
}

impl ModelStatus {
    /// "loading", "ready" or "failed" (for data attributes and styles).
    pub fn label(&self) -> &'static str {
        match self {
            ModelStatus::Loading(_) => "loading",
            ModelStatus::Ready => "ready",
            ModelStatus::Failed(_) => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TrainStatus {
    Idle,
    Preparing,
    Running,
    Stopped,
    /// Ended by "Stop early": `patience` validations in a row found no lower loss than the best's.
    StoppedEarly { step: usize, patience: usize, best_step: usize, best_loss: f64 },
    Finished,
    Failed(String),
}

impl TrainStatus {
    pub fn label(&self) -> &'static str {
        match self {
            TrainStatus::Idle => "idle",
            TrainStatus::Preparing => "preparing",
            TrainStatus::Running => "running",
            TrainStatus::Stopped => "stopped",
            TrainStatus::StoppedEarly { .. } => "stopped-early",
            TrainStatus::Finished => "finished",
            TrainStatus::Failed(_) => "failed",
        }
    }
}

/// One point of the loss chart: a training loss read back, a validation loss, or both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossPoint {
    pub step: usize,
    pub train: Option<f32>,
    pub val: Option<f64>,
}

/// The settings as typed (strings, so a half-typed number is not lost), parsed on demand.
#[derive(Clone, Copy)]
pub struct SettingsForm {
    pub rank: RwSignal<String>,
    pub alpha: RwSignal<String>,
    pub targets: RwSignal<Vec<Target>>,
    pub lr: RwSignal<String>,
    pub steps: RwSignal<String>,
    pub batch: RwSignal<String>,
    pub seq_len: RwSignal<String>,
    pub seed: RwSignal<String>,
    /// Gradient checkpointing (`TrainSettings::grad_checkpoint`).
    pub grad_checkpoint: RwSignal<bool>,
    /// GPU memory a run may use, in GiB (`TrainSettings::max_memory`; default what a tab can count on).
    pub max_memory: RwSignal<String>,
    /// Stop after this many validations in a row without a lower loss (the CLI's --early-stop);
    /// empty or 0: never.
    pub early_stop: RwSignal<String>,
}

fn number<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, String> {
    s.trim().parse().map_err(|_| format!("{what} must be a number, got “{}”", s.trim()))
}

impl SettingsForm {
    fn new() -> Self {
        Self {
            rank: RwSignal::new("8".into()),
            alpha: RwSignal::new("16".into()),
            targets: RwSignal::new(vec![Target::Q, Target::V]),
            lr: RwSignal::new("0.002".into()),
            steps: RwSignal::new("60".into()),
            batch: RwSignal::new("4".into()),
            seq_len: RwSignal::new("128".into()),
            seed: RwSignal::new("0".into()),
            grad_checkpoint: RwSignal::new(false),
            max_memory: RwSignal::new((crate::studio::TAB_GPU_MEMORY >> 30).to_string()),
            early_stop: RwSignal::new(String::new()),
        }
    }

    /// Early stopping's patience as typed: 0 (off) when empty.
    pub fn patience(&self) -> Result<usize, String> {
        let typed = self.early_stop.get();
        match typed.trim() {
            "" => Ok(0),
            t => t.parse().map_err(|_| format!("“Stop early after” must be a whole number of validations (empty or 0 never stops early), got “{t}”")),
        }
    }

    /// The sequence length as typed (None while it is not a number).
    pub fn seq_len(&self) -> Option<usize> {
        self.seq_len.get().trim().parse().ok()
    }

    /// Parse and check every field; the error is one sentence naming the field.
    pub fn parse(&self, config: &Config) -> Result<(LoraOptions, TrainSettings), String> {
        let steps: usize = number("Steps", &self.steps.get())?;
        let seed: u64 = number("The seed", &self.seed.get())?;
        self.patience()?;
        let gib: f64 = number("The GPU memory limit", &self.max_memory.get())?;
        if !(gib.is_finite() && gib > 0.0) {
            return Err(format!("The GPU memory limit must be a positive number of GiB, got {gib}"));
        }
        let opts = LoraOptions {
            rank: number("The rank", &self.rank.get())?,
            alpha: number("Alpha", &self.alpha.get())?,
            targets: self.targets.get(),
            seed,
            ..LoraOptions::default()
        };
        let settings = TrainSettings {
            steps,
            lr: number("The learning rate", &self.lr.get())?,
            batch: number("The batch size", &self.batch.get())?,
            seq_len: number("The sequence length", &self.seq_len.get())?,
            warmup: TrainSettings::warmup_default(steps),
            // Read the loss back about 100 times per run (each read waits for the GPU).
            log_every: (steps / 100).max(1),
            seed,
            grad_checkpoint: self.grad_checkpoint.get(),
            max_memory: Some((gib * (1u64 << 30) as f64) as u64),
            ..TrainSettings::default()
        };
        crate::train::validate_lora(&opts).map_err(|e| e.to_string())?;
        for t in &opts.targets {
            t.module(config.arch).map_err(|e| e.to_string())?;
        }
        settings.validate(config).map_err(|e| e.to_string())?;
        Ok((opts, settings))
    }
}

#[derive(Clone, Copy)]
pub struct AppState {
    pub studio: RwSignal<Option<Rc<Studio>>, LocalStorage>,
    pub model_status: RwSignal<ModelStatus>,
    pub text: RwSignal<String>,
    /// Token count and split of the text at the current sequence length (or why not).
    pub stats: RwSignal<Option<Result<TextStats, String>>>,
    pub form: SettingsForm,
    pub train_status: RwSignal<TrainStatus>,
    pub points: RwSignal<Vec<LossPoint>>,
    pub step: RwSignal<usize>,
    pub total_steps: RwSignal<usize>,
    pub tokens_per_s: RwSignal<Option<f64>>,
    pub eta_s: RwSignal<Option<f64>>,
    /// The run on the GPU (taken out while a task uses it, so two tasks never share it).
    pub run: StoredValue<Option<Run>, LocalStorage>,
    /// The adapter as of the last snapshot, on the host: downloadable whatever happens to the GPU.
    pub saved: RwSignal<Option<Rc<SavedAdapter>>, LocalStorage>,
    pub stop: RwSignal<bool>,
    /// What the GPU is doing now (one task at a time), for disabling buttons.
    pub busy: RwSignal<Option<&'static str>>,
    /// A sentence about the last GPU-wide problem (device lost), shown at the top.
    pub alert: RwSignal<Option<String>>,
    /// The studio whose device was lost: its files load the same model again on a new device.
    pub lost: StoredValue<Option<Rc<Studio>>, LocalStorage>,
    /// The format the frozen matrices get at the next load: "" keeps the stored one, else a
    /// `WeightFormat` name (load_in_8bit / load_in_4bit, as the select offers them).
    pub frozen: RwSignal<String>,
    /// GPU bytes in use once the current run was set up (measured), to set beside the estimate.
    pub train_bytes: RwSignal<Option<u64>>,
    /// GPU tensors and bytes live after the last step (`MemoryCounter`): the soak test's leak check.
    pub gpu_live: RwSignal<Option<(u64, u64)>>,
    /// The run kept in the browser's storage across reloads (`super::persist`).
    pub persist: Persist,
    /// Text or examples, the examples themselves, and what a run on them gives (see `data`).
    pub data: DataForm,
    /// The last "Where the time goes" measurement (`Studio::profile`), or why there is none.
    pub profile: RwSignal<Option<Result<Profiled, String>>>,
}

impl AppState {
    pub fn new() -> Self {
        Self {
            studio: RwSignal::new_local(None),
            model_status: RwSignal::new(ModelStatus::Loading(format!("Loading the default model ({DEFAULT_MODEL})…"))),
            text: RwSignal::new(super::examples::EXAMPLES[0].text.to_string()),
            stats: RwSignal::new(None),
            form: SettingsForm::new(),
            train_status: RwSignal::new(TrainStatus::Idle),
            points: RwSignal::new(Vec::new()),
            step: RwSignal::new(0),
            total_steps: RwSignal::new(0),
            tokens_per_s: RwSignal::new(None),
            eta_s: RwSignal::new(None),
            run: StoredValue::new_local(None),
            saved: RwSignal::new_local(None),
            stop: RwSignal::new(false),
            busy: RwSignal::new(None),
            alert: RwSignal::new(None),
            lost: StoredValue::new_local(None),
            frozen: RwSignal::new(String::new()),
            train_bytes: RwSignal::new(None),
            gpu_live: RwSignal::new(None),
            persist: Persist::new(),
            data: DataForm::new(),
            profile: RwSignal::new(None),
        }
    }

    /// Provide this state to every component below.
    pub fn provide(self) -> Self {
        provide_context(self);
        self
    }

    pub fn get() -> Self {
        expect_context::<AppState>()
    }

    /// Mark the GPU busy with `what`; false (and nothing changes) if it already is.
    pub fn claim(&self, what: &'static str) -> bool {
        if self.busy.get_untracked().is_some() {
            return false;
        }
        self.busy.set(Some(what));
        true
    }

    pub fn release(&self) {
        self.busy.set(None);
    }

    /// Note a GPU-wide failure: a lost device makes the studio unusable (until reloaded) but keeps
    /// the text, the settings and the last snapshot.
    pub fn gpu_failed(&self, e: &StudioError) {
        if e.is_device_lost() {
            let saved = self.saved.get_untracked().map(|s| s.step());
            let keep = match saved {
                Some(step) => format!(" The adapter as of step {step} is still downloadable below."),
                None => String::new(),
            };
            self.alert.set(Some(format!(
                "{e}{keep} Your text and settings are kept; “Reload the model” opens a new device and puts the adapter back on it."
            )));
            if let Some(studio) = self.studio.get_untracked() {
                self.lost.set_value(Some(studio));
            }
            self.studio.set(None);
            self.run.set_value(None);
            self.model_status.set(ModelStatus::Failed("The GPU device was lost.".into()));
        }
    }

    /// The frozen weights' format chosen in the select (None: as stored). The select's values are
    /// WeightFormat names, so only "" is not one.
    pub fn chosen_format(&self) -> Option<WeightFormat> {
        WeightFormat::parse(&self.frozen.get_untracked())
    }

    /// Load a model onto a new GPU device, its frozen matrices in `frozen` (None: as stored); the
    /// previous model stays if this fails.
    pub async fn load_model(self, source: ModelSource, name: String, frozen: Option<WeightFormat>) {
        if !self.claim("loading a model") {
            return;
        }
        self.model_status.set(ModelStatus::Loading(format!("Loading {name} onto the GPU…")));
        // Let the status paint before parsing a large file blocks the thread.
        browser::yield_now().await;
        match Studio::open(source, &name, frozen).await {
            Ok(studio) => {
                // Matmul variants tuned on this device before (by "Measure" in "Where the time goes").
                studio.use_stored_tuning();
                self.studio.set(Some(Rc::new(studio)));
                self.profile.set(None);
                // An adapter on the GPU belongs to the old model; the host snapshot stays downloadable.
                self.run.set_value(None);
                self.train_bytes.set(None);
                self.points.set(Vec::new());
                self.train_status.set(TrainStatus::Idle);
                self.alert.set(None);
                self.model_status.set(ModelStatus::Ready);
            }
            Err(e) => {
                let keep = if self.studio.get_untracked().is_some() { " The previous model stays loaded." } else { "" };
                let why = match e.gpu() {
                    // Not the model's fault: the sentence alone says what to do.
                    Some(GpuError::WebGpuUnavailable) => e.to_string(),
                    _ => format!("Could not load {name}: {e}.{keep}"),
                };
                self.model_status.set(ModelStatus::Failed(why));
            }
        }
        self.release();
        self.model_loaded().await;
    }

    /// Fetch the default model from next to the page and load it.
    pub async fn load_default(self) {
        let base = format!("models/{DEFAULT_MODEL}");
        let fetched = async {
            Ok::<_, String>(ModelFiles {
                config: String::from_utf8_lossy(&browser::fetch_bytes(&format!("{base}/config.json")).await?).into_owned(),
                weights: vec![("model.safetensors".into(), browser::fetch_bytes(&format!("{base}/model.safetensors")).await?)],
                tokenizer: browser::fetch_bytes(&format!("{base}/tokenizer.json")).await?,
                generation_config: None,
                tokenizer_config: None,
            })
        };
        match fetched.await {
            Ok(files) => self.load_model(files.into(), DEFAULT_MODEL.into(), self.chosen_format()).await,
            Err(e) => self.model_status.set(ModelStatus::Failed(format!("The default model could not be loaded: {e}."))),
        }
    }

    /// Fetch SmolLM2-135M-Instruct (Q4_1 GGUF) from next to the page, with progress, and load it.
    pub async fn load_smollm2(self) {
        if !self.claim("downloading a model") {
            return;
        }
        let status = self.model_status;
        status.set(ModelStatus::Loading(format!("Downloading {SMOLLM2_FILE}…")));
        let shown = std::cell::Cell::new(0);
        let progress = |got: u64, total: Option<u64>| {
            // One update per MB, not per chunk.
            if got / 1_000_000 != shown.replace(got / 1_000_000) {
                let of = total.map(|t| format!(" of {}", format::bytes(t))).unwrap_or_default();
                status.set(ModelStatus::Loading(format!("Downloading {SMOLLM2_FILE}: {}{of}…", format::bytes(got))));
            }
        };
        let fetched = browser::fetch_with_progress(&format!("models/{SMOLLM2_FILE}"), progress).await;
        self.release();
        let keep = if self.studio.get_untracked().is_some() { " The previous model stays loaded." } else { "" };
        match fetched {
            Ok(Some(bytes)) => {
                let source = ModelSource::Gguf { file_name: SMOLLM2_FILE.into(), bytes: bytes.into() };
                self.load_model(source, SMOLLM2_FILE.into(), self.chosen_format()).await
            }
            Ok(None) => status.set(ModelStatus::Failed(format!(
                "SmolLM2-135M-Instruct is not downloaded: run ./dev setup, which puts {SMOLLM2_FILE} (94 MB) in web/models/, then rebuild the page.{keep}"
            ))),
            Err(e) => status.set(ModelStatus::Failed(format!("SmolLM2-135M-Instruct could not be downloaded: {e}.{keep}"))),
        }
    }

    /// After a lost device: load the same model on a new device and put the last snapshot of the
    /// adapter back on it, so Resume, Compare and downloads carry on from there.
    pub async fn reload(self) {
        let Some(lost) = self.lost.get_value() else { return self.load_default().await };
        let points = self.points.get_untracked();
        // The best snapshot of the run is on the host: it survives the device.
        let best = self.data.best.get_untracked();
        // As it was: same source, same format (whatever the select says now).
        self.load_model(lost.source().clone(), lost.info.name.clone(), lost.frozen()).await;
        let Some(studio) = self.studio.get_untracked() else { return };
        self.lost.set_value(None);
        let Some(saved) = self.saved.get_untracked() else { return };
        let Ok((_, settings)) = self.form.parse(studio.config()) else { return };
        if !self.claim("restoring the adapter") {
            return;
        }
        let steps = settings.steps.max(saved.step());
        let data = self.train_data();
        match studio.load_adapter_on(&data, &saved, TrainSettings { steps, ..settings }).await {
            Ok(run) => {
                // The chart up to the snapshot stays; later points were lost with the device.
                let done = run.steps_done();
                self.adopt(run, steps, points.into_iter().filter(|p| p.step <= done).collect());
                self.data.best.set(best.filter(|b| b.step <= done));
            }
            Err(e) => self.train_status.set(TrainStatus::Failed(format!("The adapter could not be put back on the GPU: {e}."))),
        }
        self.release();
    }

    /// Start a new run from the settings, or continue the current one (after Stop, or with more steps).
    pub fn train(self, fresh: bool) {
        let Some(studio) = self.studio.get_untracked() else { return };
        let (opts, settings) = match self.form.parse(studio.config()) {
            Ok(p) => p,
            Err(e) => return self.train_status.set(TrainStatus::Failed(e)),
        };
        if !self.claim("training") {
            return;
        }
        let data = self.train_data();
        self.stop.set(false);
        spawn_local(async move {
            let current = self.run.try_update_value(|r| r.take()).flatten();
            let resumed = !fresh && current.as_ref().is_some_and(|r| !r.finished());
            let run = match (fresh, current) {
                (false, Some(run)) if !run.finished() => Ok(run),
                (false, Some(run)) => {
                    // Finished: continue from a snapshot with the new number of steps.
                    let more = async {
                        let saved = studio.snapshot(&run).await?;
                        studio.resume_on(&data, &saved, TrainSettings { steps: settings.steps, ..run.session.settings.clone() }).await
                    };
                    let r = more.await;
                    if r.is_err() {
                        self.run.set_value(Some(run));
                    }
                    r
                }
                (_, old) => {
                    // Freed first, so the GPU holds one run and the measured bytes are this run's.
                    drop(old);
                    self.train_status.set(TrainStatus::Preparing);
                    self.points.set(Vec::new());
                    self.train_bytes.set(None);
                    let run = studio.start_on(&data, &opts, settings).await;
                    if let Ok(run) = &run {
                        self.train_bytes.set(Some(studio.gpu_bytes()));
                        self.note_run(run, true);
                    }
                    run
                }
            };
            match run {
                Ok(run) => {
                    if !resumed {
                        self.run_begins();
                    }
                    self.drive(studio, run).await
                }
                Err(e) => {
                    self.train_status.set(TrainStatus::Failed(e.to_string()));
                    self.gpu_failed(&e);
                }
            }
            self.release();
        });
    }

    /// Step `run` until it finishes or Stop is pressed, yielding to the page between steps.
    async fn drive(self, studio: Rc<Studio>, mut run: Run) {
        let total = run.session.settings.steps;
        self.total_steps.set(total);
        self.step.set(run.steps_done());
        self.train_status.set(TrainStatus::Running);
        // Validation and the host snapshot wait for the GPU: about five times a run, never every step.
        let eval_every = eval_every(total);
        // Checked when the run started (`SettingsForm::parse`).
        let patience = untrack(|| self.form.patience()).unwrap_or(0);
        let mut stopped_early = None;
        let result: Result<(), StudioError> = async {
            if self.points.with_untracked(Vec::is_empty) {
                let val = self.validate(&studio, &mut run).await?;
                self.points.update(|p| p.push(LossPoint { step: run.steps_done(), train: None, val: Some(val) }));
            }
            let (t0, mut tokens) = (browser::now_ms(), 0usize);
            while !run.finished() && !self.stop.get_untracked() {
                let r = studio.step(&mut run).await?;
                tokens += r.tokens;
                let secs = (browser::now_ms() - t0) / 1000.0;
                if secs > 0.0 {
                    let rate = tokens as f64 / secs;
                    self.tokens_per_s.set(Some(rate));
                    let left = (total - r.step) as f64 * r.tokens as f64 / rate;
                    self.eta_s.set(Some(left));
                }
                self.step.set(r.step);
                self.gpu_live.set(Some((studio.gpu_tensors(), studio.gpu_bytes())));
                let at_eval = r.step % eval_every == 0 || run.finished();
                let val = if at_eval { Some(self.validate(&studio, &mut run).await?) } else { None };
                if r.loss.is_some() || val.is_some() {
                    self.points.update(|p| p.push(LossPoint { step: r.step, train: r.loss, val }));
                }
                if at_eval {
                    self.keep(&studio, &run).await?;
                    stopped_early = self.stop_early(patience, r.step);
                    if stopped_early.is_some() {
                        break;
                    }
                }
                browser::yield_now().await;
            }
            if !run.finished() && stopped_early.is_none() {
                // Stopped between evaluations: keep what was trained.
                self.keep(&studio, &run).await?;
            }
            Ok(())
        }
        .await;
        self.eta_s.set(None);
        match result {
            Ok(()) => {
                self.train_status.set(match stopped_early {
                    Some(early) => early,
                    None if run.finished() => TrainStatus::Finished,
                    None => TrainStatus::Stopped,
                });
                self.run.set_value(Some(run));
            }
            Err(e) => {
                if !e.is_device_lost() {
                    // A step that failed (a non-finite one is not applied) leaves the last good
                    // adapter on the GPU: that is the one to keep.
                    if let Ok(s) = studio.snapshot(&run).await {
                        self.saved.set(Some(Rc::new(s)));
                    }
                }
                // A refused update is taken back: the counter shows the last applied step.
                self.step.set(run.steps_done());
                let step = self.saved.get_untracked().map(|s| s.step());
                let kept = step.map(|s| format!(" The adapter as of step {s} stays downloadable.")).unwrap_or_default();
                self.train_status.set(TrainStatus::Failed(format!("Training stopped: {e}.{kept}")));
                if !e.is_device_lost() {
                    self.run.set_value(Some(run));
                }
                self.gpu_failed(&e);
            }
        }
    }

    /// Copy `run`'s adapter to the host, and keep it in the browser's storage.
    async fn keep(&self, studio: &Studio, run: &Run) -> Result<(), StudioError> {
        self.saved.set(Some(Rc::new(studio.snapshot(run).await?)));
        self.persist_run().await;
        Ok(())
    }

    /// Generate from `prompt` with the base model and with the current adapter (same seed); the
    /// base answer is reused when it cannot have changed (`Studio::compare`).
    pub async fn compare(self, prompt: Ask, max_tokens: usize, sampling: Sampling) -> Result<Compared, String> {
        let studio = self.studio.get_untracked().ok_or("No model is loaded.")?;
        if !self.claim("generating") {
            return Err("The GPU is busy; try again when it is done.".into());
        }
        let run = self.run.try_update_value(|r| r.take()).flatten();
        let result = studio.compare(&prompt, max_tokens, &sampling, run.as_ref()).await;
        self.run.set_value(run);
        self.release();
        result.map_err(|e| {
            self.gpu_failed(&e);
            e.to_string()
        })
    }

    /// Measure where the GPU time of a training step at the current settings and of a generated
    /// token goes on the loaded model (`Studio::profile`, which also tunes the matmul), into
    /// `profile`; a sentence when it cannot.
    pub async fn measure_profile(self) {
        let Some(studio) = self.studio.get_untracked() else {
            return self.profile.set(Some(Err("Load a model first: the measurement runs on the loaded model.".into())));
        };
        let (opts, settings) = match self.form.parse(studio.config()) {
            Ok(p) => p,
            Err(e) => return self.profile.set(Some(Err(format!("The measurement uses the training settings: {e}")))),
        };
        if !self.claim("profiling") {
            return self.profile.set(Some(Err("The GPU is busy; measure when it is done.".into())));
        }
        self.profile.set(None);
        // Let "Measuring…" paint before the GPU work.
        browser::yield_now().await;
        let result = studio.profile(&opts, settings).await;
        self.release();
        self.profile.set(Some(result.map_err(|e| {
            self.gpu_failed(&e);
            format!("The measurement failed: {e}.")
        })));
    }

    /// Use an adapter from files: it becomes the current run (to compare, or to train further).
    pub async fn use_adapter(self, files: Vec<(String, Vec<u8>)>) -> Result<usize, String> {
        let studio = self.studio.get_untracked().ok_or("Load a model first.")?;
        let saved = SavedAdapter::from_files(files).map_err(|e| e.to_string())?;
        let (_, settings) = self.form.parse(studio.config())?;
        if !self.claim("loading an adapter") {
            return Err("The GPU is busy; try again when it is done.".into());
        }
        let data = self.train_data();
        let steps = settings.steps.max(saved.step());
        let result = studio.load_adapter_on(&data, &saved, TrainSettings { steps, ..settings }).await;
        self.release();
        let run = result.map_err(|e| {
            self.gpu_failed(&e);
            e.to_string()
        })?;
        self.saved.set(Some(Rc::new(saved)));
        self.run_begins();
        Ok(self.adopt(run, steps, Vec::new()))
    }

    /// Make `run` (an adapter put on the GPU from a snapshot) the current one, paused at its step
    /// of `steps`, with `points` on the chart; returns its step.
    pub(super) fn adopt(&self, run: Run, steps: usize, points: Vec<LossPoint>) -> usize {
        let done = run.steps_done();
        self.note_run(&run, true);
        self.run.set_value(Some(run));
        self.points.set(points);
        self.step.set(done);
        self.total_steps.set(steps);
        self.train_status.set(if done >= steps { TrainStatus::Finished } else { TrainStatus::Stopped });
        done
    }

    /// Snapshot the current run now if the GPU is free (downloads then hold the newest adapter).
    pub async fn fresh_snapshot(self) -> Option<Rc<SavedAdapter>> {
        if let Some(studio) = self.studio.get_untracked() {
            if self.claim("saving") {
                let run = self.run.try_update_value(|r| r.take()).flatten();
                if let Some(run) = &run {
                    if let Ok(s) = studio.snapshot(run).await {
                        self.saved.set(Some(Rc::new(s)));
                    }
                }
                self.run.set_value(run);
                self.release();
            }
        }
        self.saved.get_untracked()
    }
}

/// Steps between the page's validations in a run of `total` steps: about five a run, at least 5
/// steps apart (each waits for the GPU and copies the adapter to the host).
pub fn eval_every(total: usize) -> usize {
    (total / 5).max(5)
}

impl Default for AppState {
    fn default() -> Self {
        Self::new()
    }
}
