//! Component tests of the page in headless Chromium with real WebGPU (wasm-bindgen-test): panels
//! are mounted with the llama-tiny fixture loaded through the engine, driven by DOM events as a
//! user would, and their output checked against numbers computed here.
#![cfg(target_arch = "wasm32")]

mod common;
use common::gpu;

use std::cell::Cell;
use std::rc::Rc;

use leptos::prelude::*;
use loratab::model::{ModelFiles, Tokenizer};
use loratab::generate::Sampling;
use loratab::studio::{Run, Studio};
use loratab::web::state::ModelStatus;
use loratab::studio::SavedAdapter;
use loratab::lora::LoraOptions;
use loratab::train::TrainSettings;
use loratab::web::{AdapterPanel, AppState, ComparePanel, GpuAlert, ModelPanel, ProfileTable, RankDemo, SettingsPanel, TextPanel, TrainPanel};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::wasm_bindgen_test;

const TEXT: &str = include_str!("fixtures/eval.txt");
const CONFIG: &str = include_str!("fixtures/llama-tiny/config.json");
const WEIGHTS: &[u8] = include_bytes!("fixtures/llama-tiny/model.safetensors");
const TOKENIZER: &[u8] = include_bytes!("fixtures/llama-tiny/tokenizer.json");
const TINY_GGUF: &[u8] = include_bytes!("fixtures/gguf/tiny.gguf");

fn document() -> web_sys::Document {
    web_sys::window().unwrap().document().unwrap()
}

async fn sleep(ms: i32) {
    let p = js_sys::Promise::new(&mut |resolve, _| {
        web_sys::window().unwrap().set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms).unwrap();
    });
    JsFuture::from(p).await.unwrap();
}

/// Wait (up to `secs`) until `cond` holds; panics with `what` otherwise.
async fn until(what: &str, secs: f64, cond: impl Fn() -> bool) {
    let start = js_sys::Date::now();
    while !cond() {
        assert!(js_sys::Date::now() - start < secs * 1000.0, "timed out waiting for {what}");
        sleep(20).await;
    }
}

/// Mount `view` in a fresh container with an [`AppState`] holding llama-tiny on the GPU.
async fn mount<V: IntoView + 'static>(view: fn() -> V) -> (AppState, web_sys::HtmlElement) {
    let root: web_sys::HtmlElement = document().create_element("div").unwrap().unchecked_into();
    document().body().unwrap().append_child(&root).unwrap();
    let slot = Rc::new(Cell::new(None));
    let out = slot.clone();
    let handle = leptos::mount::mount_to(root.clone(), move || {
        out.set(Some(AppState::new().provide()));
        view()
    });
    std::mem::forget(handle); // keep it mounted for the test's life
    let state = slot.take().unwrap();
    let files = ModelFiles {
        config: CONFIG.into(),
        weights: vec![("model.safetensors".into(), WEIGHTS.to_vec())],
        tokenizer: TOKENIZER.to_vec(),
        ..Default::default()
    };
    let studio = Studio::load(gpu().await, files, "llama-tiny").await.unwrap();
    state.studio.set(Some(Rc::new(studio)));
    state.model_status.set(ModelStatus::Ready);
    (state, root)
}

fn find(root: &web_sys::HtmlElement, selector: &str) -> web_sys::HtmlElement {
    root.query_selector(selector).unwrap().unwrap_or_else(|| panic!("no {selector}")).unchecked_into()
}

fn text_of(root: &web_sys::HtmlElement, selector: &str) -> String {
    root.query_selector(selector).unwrap().and_then(|e| e.text_content()).unwrap_or_default()
}

fn attr(root: &web_sys::HtmlElement, selector: &str, name: &str) -> String {
    root.query_selector(selector).unwrap().and_then(|e| e.get_attribute(name)).unwrap_or_default()
}

/// Type `value` into the input or textarea at `selector` (sets it and fires `input`, as typing does).
fn type_into(root: &web_sys::HtmlElement, selector: &str, value: &str) {
    let el = find(root, selector);
    match el.dyn_ref::<web_sys::HtmlInputElement>() {
        Some(input) => input.set_value(value),
        None => el.unchecked_ref::<web_sys::HtmlTextAreaElement>().set_value(value),
    }
    let init = web_sys::EventInit::new();
    init.set_bubbles(true);
    el.dispatch_event(&web_sys::Event::new_with_event_init_dict("input", &init).unwrap()).unwrap();
}

fn small_settings(root: &web_sys::HtmlElement, steps: usize) {
    // The settings of tests/studio.rs's run, whose validation loss falls.
    for (id, v) in [("#rank", "4"), ("#alpha", "8"), ("#lr", "0.03"), ("#batch", "4"), ("#seq-len", "16")] {
        type_into(root, id, v);
    }
    type_into(root, "#steps", &steps.to_string());
}

fn both() -> impl IntoView {
    view! { <TextPanel/><SettingsPanel/> }
}

#[wasm_bindgen_test]
async fn settings_show_the_adapter_size_live_and_refuse_nonsense() {
    let (_, root) = mount(both).await;
    small_settings(&root, 5);
    // llama-tiny, targets q and v: 2 layers · r · ((48 + 48) + (48 + 16)) = 320·r.
    until("the size for rank 4", 5.0, || attr(&root, "[data-testid=adapter-size]", "data-params") == "1280").await;
    type_into(&root, "#rank", "16");
    until("the size for rank 16", 5.0, || attr(&root, "[data-testid=adapter-size]", "data-params") == "5120").await;
    // Unchecking v leaves q: 2 · 16 · 96.
    find(&root, "#target-v").click();
    until("the size without v", 5.0, || attr(&root, "[data-testid=adapter-size]", "data-params") == "3072").await;
    type_into(&root, "#rank", "0");
    until("the rank error", 5.0, || text_of(&root, "[data-testid=settings-error]") == "the LoRA rank must be at least 1").await;
    type_into(&root, "#rank", "four");
    until("the parse error", 5.0, || text_of(&root, "[data-testid=settings-error]").starts_with("The rank must be a number")).await;
    type_into(&root, "#rank", "4");
    type_into(&root, "#seq-len", "500");
    until("the context error", 5.0, || text_of(&root, "[data-testid=settings-error]").contains("context of 64 tokens")).await;
}

#[wasm_bindgen_test]
async fn the_text_panel_counts_tokens_and_splits() {
    let (_, root) = mount(both).await;
    small_settings(&root, 5);
    type_into(&root, "#train-text", TEXT);
    let n = Tokenizer::from_bytes(TOKENIZER).unwrap().encode(TEXT).unwrap().len();
    until("the token count", 5.0, || attr(&root, "[data-testid=text-stats]", "data-tokens") == n.to_string()).await;
    let windows = n / 16;
    let held = ((windows as f64 / 10.0).round() as usize).max(1);
    let stats = text_of(&root, "[data-testid=text-stats]");
    assert!(stats.contains(&format!("{} training windows of 16 tokens, {held} held out", windows - held)), "{stats}");
    type_into(&root, "#train-text", "A few words.");
    until("the too-short sentence", 5.0, || text_of(&root, "[data-testid=text-stats]").contains("paste more text or lower the sequence length")).await;
}

fn train_and_compare() -> impl IntoView {
    view! { <TextPanel/><SettingsPanel/><TrainPanel/><ComparePanel/> }
}

#[wasm_bindgen_test]
async fn training_plots_a_falling_loss_then_compares() {
    let (state, root) = mount(train_and_compare).await;
    small_settings(&root, 6);
    type_into(&root, "#train-text", TEXT);
    until("the settings", 5.0, || root.query_selector("[data-testid=adapter-size]").unwrap().is_some()).await;
    find(&root, "[data-testid=train]").click();
    until("training to finish", 300.0, || matches!(attr(&root, "[data-testid=train-status]", "data-state").as_str(), "finished" | "failed")).await;
    assert_eq!(attr(&root, "[data-testid=train-status]", "data-state"), "finished", "{}", text_of(&root, "[data-testid=train-status]"));
    let train: Vec<f64> = attr(&root, "[data-testid=loss-chart]", "data-train").split(',').map(|x| x.parse().unwrap()).collect();
    assert_eq!(train.len(), 6);
    let val: Vec<f64> = attr(&root, "[data-testid=loss-chart]", "data-val").split(',').map(|x| x.parse().unwrap()).collect();
    assert!(val.len() >= 2 && val[val.len() - 1] < val[0], "validation loss {val:?}");
    assert_eq!(root.query_selector_all("g.series-train circle").unwrap().length(), 6);
    assert!(text_of(&root, "[data-testid=step]").contains("Step 6 of 6"));
    assert!(state.saved.get_untracked().is_some_and(|s| s.step() == 6), "the adapter is kept on the host");

    // Sampled (temperature 0.8, the page's top-k of 40), so the seed typed here must reach the engine.
    const PROMPT: &str = "the ";
    const NEW_TOKENS: usize = 12;
    type_into(&root, "#prompt", PROMPT);
    type_into(&root, "#gen-tokens", &NEW_TOKENS.to_string());
    type_into(&root, "#temperature", "0.8");
    type_into(&root, "#gen-seed", "5");
    find(&root, "[data-testid=generate]").click();
    until("both generations", 60.0, || !text_of(&root, "[data-testid=compare-tuned]").is_empty()).await;
    let (shown_base, shown_tuned) = (text_of(&root, "[data-testid=compare-base]"), text_of(&root, "[data-testid=compare-tuned]"));

    // The oracle: the engine's own generation with the same prompt, length, seed and sampling, from
    // the base model and from an adapter trained outside the page with the page's settings.
    let studio = state.studio.get_untracked().unwrap();
    let (opts, settings) = state.form.parse(studio.config()).unwrap();
    assert_eq!((opts.rank, settings.steps), (4, 6));
    let sampling = Sampling { temperature: 0.8, top_k: 40, seed: 5 };
    let base = studio.generate(PROMPT, NEW_TOKENS, &sampling, None).await.unwrap();
    let (_, _, _, run) = unbroken_run(&studio, &opts, &settings).await;
    let tuned = studio.generate(PROMPT, NEW_TOKENS, &sampling, Some(&run)).await.unwrap();
    assert!(!base.is_empty() && !tuned.is_empty(), "the engine continues the prompt: {base:?}, {tuned:?}");
    assert_eq!(shown_base, format!("{PROMPT}{base}"), "the base model's text");
    assert_eq!(shown_tuned, format!("{PROMPT}{tuned}"), "the adapter's text");
    let caption = || text_of(&root, "[data-testid=compare-base-caption]");
    assert!(!caption().contains("as before"), "the first base answer is generated: {}", caption());

    // Clicked again with the same prompt, length and sampling: the base answer is shown as before
    // (the frozen weights cannot have changed it), the adapter's generated again.
    find(&root, "[data-testid=generate]").click();
    until("the second Compare", 60.0, || caption().contains("as before")).await;
    assert_eq!(text_of(&root, "[data-testid=compare-base]"), shown_base);
    assert_eq!(text_of(&root, "[data-testid=compare-tuned]"), shown_tuned);
    // Another seed: both generated, the base as the engine gives it for that seed.
    type_into(&root, "#gen-seed", "6");
    find(&root, "[data-testid=generate]").click();
    until("the third Compare", 60.0, || !caption().contains("as before") && state.busy.get_untracked().is_none()).await;
    let base6 = studio.generate(PROMPT, NEW_TOKENS, &Sampling { seed: 6, ..sampling }, None).await.unwrap();
    assert_eq!(text_of(&root, "[data-testid=compare-base]"), format!("{PROMPT}{base6}"), "seed 6's base text");
}

fn train_and_download() -> impl IntoView {
    view! { <GpuAlert/><TextPanel/><SettingsPanel/><TrainPanel/><AdapterPanel/> }
}

/// The device is destroyed mid-run (as a driver reset would lose it): the page says so, keeps the
/// text, the settings and the last snapshot (which downloads), and "Reload the model" puts that
/// adapter on a new device, from where Resume finishes the run.
#[wasm_bindgen_test]
async fn a_lost_device_keeps_the_text_and_the_adapter() {
    let (state, root) = mount(train_and_download).await;
    small_settings(&root, 30);
    type_into(&root, "#train-text", TEXT);
    until("the settings", 5.0, || root.query_selector("[data-testid=adapter-size]").unwrap().is_some()).await;
    find(&root, "[data-testid=train]").click();
    until("the first snapshot", 300.0, || state.saved.get_untracked().is_some()).await;
    let kept = state.saved.get_untracked().unwrap().step();
    state.studio.get_untracked().unwrap().ctx.device.destroy();
    until("training to stop", 60.0, || attr(&root, "[data-testid=train-status]", "data-state") != "running").await;
    assert!(state.step.get_untracked() < 30, "the device was lost before the run finished");
    let status = text_of(&root, "[data-testid=train-status]");
    assert_eq!(attr(&root, "[data-testid=train-status]", "data-state"), "failed", "{status}");
    assert!(status.contains("device was lost") && status.contains(&format!("as of step {kept} stays downloadable")), "{status}");
    let alert = text_of(&root, "[data-testid=alert]");
    assert!(alert.contains("Your text and settings are kept"), "{alert}");

    // Nothing typed is lost.
    assert_eq!(find(&root, "#train-text").unchecked_into::<web_sys::HtmlTextAreaElement>().value(), TEXT);
    assert_eq!(find(&root, "#rank").unchecked_into::<web_sys::HtmlInputElement>().value(), "4");

    // The adapter as of the snapshot downloads, and the zip is PEFT's files at that step.
    find(&root, "[data-testid=download-zip]").click();
    until("the download", 30.0, || !text_of(&root, "[data-testid=adapter-message]").is_empty()).await;
    let message = text_of(&root, "[data-testid=adapter-message]");
    assert!(message.starts_with(&format!("Saved loratab-adapter-r4-step{kept}.zip")), "{message}");
    let zip = state.saved.get_untracked().unwrap().zip().unwrap();
    let back = SavedAdapter::from_files(vec![("a.zip".into(), zip)]).unwrap();
    assert_eq!(back.step(), kept);
    assert_eq!(back.adapter.config.r, 4);

    // A new device: the same model, the adapter back on it, and Resume runs to the end.
    find(&root, "[data-testid=reload]").click();
    until("the adapter back on the GPU", 120.0, || attr(&root, "[data-testid=train-status]", "data-state") == "stopped").await;
    assert!(root.query_selector("[data-testid=alert]").unwrap().is_none(), "the alert is gone");
    assert_eq!(state.step.get_untracked(), kept);
    find(&root, "[data-testid=resume]").click();
    until("the resumed run", 300.0, || matches!(attr(&root, "[data-testid=train-status]", "data-state").as_str(), "finished" | "failed")).await;
    assert_eq!(attr(&root, "[data-testid=train-status]", "data-state"), "finished", "{}", text_of(&root, "[data-testid=train-status]"));
    assert!(text_of(&root, "[data-testid=step]").contains("Step 30 of 30"));
}

/// "Stop early after N validations without improvement". A learning rate of 1e-30 moves B from 0
/// by about 1e-30, which vanishes when added to the frozen projections in f32: every validation
/// loss equals step 0's exactly, and none is lower. With a patience of 2 and the page's validation
/// every 5 steps (a 20-step run) the run ends at step 10, says so, and keeps step 0's adapter: the
/// download is the engine's untrained adapter and AdamW state, byte for byte. A patience that is
/// not a whole number is a sentence.
#[wasm_bindgen_test]
async fn early_stopping_ends_the_run_and_keeps_the_best_adapter() {
    let (state, root) = mount(train_and_download).await;
    small_settings(&root, 20);
    // The batch does not matter to a run that learns nothing: one window keeps the test short.
    type_into(&root, "#lr", "1e-30");
    type_into(&root, "#batch", "1");
    type_into(&root, "#train-text", TEXT);
    type_into(&root, "#early-stop", "-1");
    until("the patience sentence", 5.0, || text_of(&root, "[data-testid=settings-error]").contains("whole number of validations")).await;
    type_into(&root, "#early-stop", "2");
    until("the settings", 5.0, || root.query_selector("[data-testid=adapter-size]").unwrap().is_some()).await;
    find(&root, "[data-testid=train]").click();
    let ended = || matches!(attr(&root, "[data-testid=train-status]", "data-state").as_str(), "stopped-early" | "finished" | "failed");
    until("the run to end", 300.0, ended).await;
    let status = text_of(&root, "[data-testid=train-status]");
    assert_eq!(attr(&root, "[data-testid=train-status]", "data-state"), "stopped-early", "{status}");
    let val: Vec<f64> = attr(&root, "[data-testid=loss-chart]", "data-val").split(',').map(|x| x.parse().unwrap()).collect();
    assert_eq!(val.len(), 3, "validations at steps 0, 5 and 10: {val:?}");
    assert!(val.iter().all(|v| *v == val[0]), "no validation is lower than step 0's: {val:?}");
    assert!(
        status.starts_with(&format!("Stopped early at step 10: 2 validations in a row without a lower loss than step 0's. The adapter of step 0 (the best, validation loss {:.4}) is kept", val[0])),
        "{status}"
    );
    assert_eq!(state.step.get_untracked(), 10);

    find(&root, "[data-testid=download-zip]").click();
    until("the download", 30.0, || !text_of(&root, "[data-testid=adapter-message]").is_empty()).await;
    let message = text_of(&root, "[data-testid=adapter-message]");
    assert!(message.starts_with("Saved loratab-adapter-r4-step0.zip"), "{message}");
    let studio = state.studio.get_untracked().unwrap();
    let (opts, settings) = state.form.parse(studio.config()).unwrap();
    let oracle = studio.snapshot(&studio.start(TEXT, &opts, settings).await.unwrap()).await.unwrap();
    let kept = state.data.best.get_untracked().unwrap().adapter;
    assert!(kept.zip().unwrap() == oracle.zip().unwrap(), "the kept adapter is the untrained one with its AdamW state");
}

/// The oracle for the page's runs: the engine trains `opts` with `settings` on TEXT, outside the
/// page and never stopped. Returns the validation loss before training (B = 0: the base model),
/// each step's training loss, the validation loss at the end, and the finished run.
async fn unbroken_run(studio: &Studio, opts: &LoraOptions, settings: &TrainSettings) -> (f64, Vec<f64>, f64, Run) {
    let mut run = studio.start(TEXT, opts, settings.clone()).await.unwrap();
    let base = studio.validation_loss(&run).await.unwrap();
    let mut losses = Vec::new();
    while !run.finished() {
        losses.push(studio.step(&mut run).await.unwrap().loss.unwrap() as f64);
    }
    assert_eq!(losses.len(), settings.steps, "one training loss per step");
    let val = studio.validation_loss(&run).await.unwrap();
    (base, losses, val, run)
}

fn rank_demo() -> impl IntoView {
    view! { <TextPanel/><SettingsPanel/><RankDemo/> }
}

/// The rank comparison trains each chosen rank with the Settings (α/r kept) and tables what the
/// engine itself gives for those settings: the base loss, then each rank's validation loss.
#[wasm_bindgen_test]
async fn the_rank_demo_tables_each_ranks_validation_loss() {
    let (state, root) = mount(rank_demo).await;
    small_settings(&root, 3);
    type_into(&root, "#train-text", TEXT);
    // Ranks 1 and 4 only: uncheck the rest of the default set (1, 2, 4, 8, 16, 32).
    for r in [2, 8, 16, 32] {
        find(&root, &format!("#demo-rank-{r}")).click();
    }
    until("the settings", 5.0, || root.query_selector("[data-testid=adapter-size]").unwrap().is_some()).await;
    find(&root, "[data-testid=ranks-start]").click();
    until("the comparison to end", 300.0, || {
        text_of(&root, "[data-testid=ranks-progress]") == "Done." || root.query_selector("[role=alert]").unwrap().is_some()
    })
    .await;
    assert_eq!(text_of(&root, "[data-testid=ranks-progress]"), "Done.", "{}", text_of(&root, "[role=alert]"));
    let rows = root.query_selector_all("[data-testid=ranks-table] tbody tr").unwrap();
    assert_eq!(rows.length(), 2);
    let row_attr = |i: u32, name: &str| rows.get(i).unwrap().unchecked_into::<web_sys::Element>().get_attribute(name).unwrap();
    let shown_base: f64 = attr(&root, "[data-testid=ranks-table]", "data-base").parse().unwrap();

    // The oracle: the same runs through the engine, outside the page.
    let studio = state.studio.get_untracked().unwrap();
    let (opts, settings) = state.form.parse(studio.config()).unwrap();
    assert_eq!((opts.rank, opts.alpha, settings.steps), (4, 8.0, 3));
    let mut vals = Vec::new();
    for (i, rank) in [1usize, 4].into_iter().enumerate() {
        let o = LoraOptions { rank, alpha: 2.0 * rank as f32, ..opts.clone() };
        let (base, _, val, _) = unbroken_run(&studio, &o, &settings).await;
        assert!((shown_base - base).abs() < 1e-5, "base {shown_base} vs {base}");
        let shown: f64 = row_attr(i as u32, "data-val").parse().unwrap();
        assert_eq!(row_attr(i as u32, "data-rank"), rank.to_string());
        assert_eq!(row_attr(i as u32, "data-params"), (320 * rank).to_string(), "2 layers · r · (96 + 64)");
        assert!((shown - val).abs() < 1e-5, "rank {rank}: the table says {shown}, the engine {val}");
        vals.push(val);
    }
    // Three steps are enough for rank 4 (tests/studio.rs's settings) to beat the base model.
    assert!(vals[1] < shown_base, "rank 4 lowered the validation loss: {vals:?} vs {shown_base}");
    // One point per rank on the chart.
    assert_eq!(root.query_selector_all("g.series-val circle").unwrap().length(), 2);
}

fn model_and_text() -> impl IntoView {
    view! { <ModelPanel/><TextPanel/> }
}

/// Drop `files` on the model panel's drop zone, as a drag from the desktop would.
fn drop_files(root: &web_sys::HtmlElement, files: &[(&str, &[u8])]) {
    let data = web_sys::DataTransfer::new().unwrap();
    for (name, bytes) in files {
        let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(*bytes));
        let file = web_sys::File::new_with_u8_array_sequence(&parts, name).unwrap();
        data.items().add_with_file(&file).unwrap();
    }
    let init = web_sys::DragEventInit::new();
    init.set_bubbles(true);
    init.set_cancelable(true);
    init.set_data_transfer(Some(&data));
    let event = web_sys::DragEvent::new_with_event_init_dict("drop", &init).unwrap();
    find(root, "[data-testid=dropzone]").dispatch_event(&event).unwrap();
}

/// Dropped files load as the model, and the panel describes it; a broken or incomplete set is a
/// sentence, and the model, the GPU state and the user's text stay.
#[wasm_bindgen_test]
async fn dropped_model_files_load_and_broken_ones_are_sentences() {
    let (state, root) = mount(model_and_text).await;
    type_into(&root, "#train-text", TEXT);
    let before = state.studio.get_untracked().unwrap();
    let status = || (attr(&root, "[data-testid=model-status]", "data-state"), text_of(&root, "[data-testid=model-status]"));

    // A safetensors file cut in half: its header promises more bytes than there are.
    let cut = &WEIGHTS[..WEIGHTS.len() / 2];
    drop_files(&root, &[("config.json", CONFIG.as_bytes()), ("model.safetensors", cut), ("tokenizer.json", TOKENIZER)]);
    until("the failure", 60.0, || status().0 == "failed").await;
    let (_, said) = status();
    assert!(said.starts_with("Could not load your model:") && said.ends_with("The previous model stays loaded."), "{said}");
    assert!(said.contains("model.safetensors"), "the sentence names the file: {said}");
    assert!(Rc::ptr_eq(&state.studio.get_untracked().unwrap(), &before), "the previous model stays");

    drop_files(&root, &[("config.json", CONFIG.as_bytes()), ("model.safetensors", WEIGHTS)]);
    until("the missing tokenizer", 10.0, || status().1.contains("tokenizer.json is missing")).await;

    // The real files, zipped: they load, and the panel shows what the safetensors header holds.
    let zip = loratab::zip::store(&[("config.json", CONFIG.as_bytes()), ("model.safetensors", WEIGHTS), ("tokenizer.json", TOKENIZER)]).unwrap();
    drop_files(&root, &[("llama-tiny.zip", &zip)]);
    until("the model", 60.0, || status().0 == "ready").await;
    assert!(!Rc::ptr_eq(&state.studio.get_untracked().unwrap(), &before), "a new model is loaded");
    assert_eq!(text_of(&root, "[data-testid=model-name]"), "llama-tiny");
    let n = u64::from_le_bytes(WEIGHTS[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&WEIGHTS[8..8 + n]).unwrap();
    let params: u64 = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, t)| t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).product::<u64>())
        .sum();
    assert_eq!(text_of(&root, "[data-testid=model-params]").replace(',', ""), params.to_string());
    assert_eq!(find(&root, "#train-text").unchecked_into::<web_sys::HtmlTextAreaElement>().value(), TEXT, "the text is kept");

    // A GGUF cut short is the reader's sentence; the whole file loads as stored, named by its file,
    // with the formats of its matrices (2-D tensors) as the file lists them.
    let loaded = state.studio.get_untracked().unwrap();
    drop_files(&root, &[("cut.gguf", &TINY_GGUF[..TINY_GGUF.len() / 2])]);
    until("the cut GGUF", 60.0, || status().0 == "failed").await;
    let (_, said) = status();
    assert!(said.starts_with("Could not load cut.gguf:") && said.ends_with("The previous model stays loaded."), "{said}");
    assert!(Rc::ptr_eq(&state.studio.get_untracked().unwrap(), &loaded), "the previous model stays");
    drop_files(&root, &[("tiny.gguf", TINY_GGUF)]);
    until("the GGUF", 60.0, || status().0 == "ready").await;
    assert_eq!(text_of(&root, "[data-testid=model-name]"), "tiny.gguf");
    let mut formats = std::collections::BTreeMap::new();
    for (_, w) in loratab::gguf::import(TINY_GGUF).unwrap().tensors.iter().filter(|(_, w)| w.shape.len() == 2) {
        *formats.entry(w.format).or_insert(0) += 1;
    }
    let listed: Vec<String> = formats.iter().map(|(f, n)| format!("{f} ×{n}")).collect();
    assert_eq!(text_of(&root, "[data-testid=weight-formats]"), format!("{} (as stored)", listed.join(", ")));
}

/// Stop pauses a run (its adapter kept on the host) and Resume carries it on: the run ends where
/// one that was never stopped ends, as the engine computes it here.
#[wasm_bindgen_test]
async fn stop_and_resume_end_where_an_unbroken_run_does() {
    const STEPS: usize = 12;
    let (state, root) = mount(train_and_download).await;
    small_settings(&root, STEPS);
    type_into(&root, "#train-text", TEXT);
    until("the settings", 5.0, || root.query_selector("[data-testid=adapter-size]").unwrap().is_some()).await;
    find(&root, "[data-testid=train]").click();
    until("step 2", 300.0, || state.step.get_untracked() >= 2).await;
    find(&root, "[data-testid=stop]").click();
    until("the run to stop", 60.0, || attr(&root, "[data-testid=train-status]", "data-state") != "running").await;
    assert_eq!(attr(&root, "[data-testid=train-status]", "data-state"), "stopped", "{}", text_of(&root, "[data-testid=train-status]"));
    let stopped_at = state.step.get_untracked();
    assert!(stopped_at < STEPS, "stopped before the end");
    assert_eq!(state.saved.get_untracked().map(|s| s.step()), Some(stopped_at), "the adapter as of the stop is kept");

    find(&root, "[data-testid=resume]").click();
    until("the resumed run", 300.0, || matches!(attr(&root, "[data-testid=train-status]", "data-state").as_str(), "finished" | "failed")).await;
    assert_eq!(attr(&root, "[data-testid=train-status]", "data-state"), "finished", "{}", text_of(&root, "[data-testid=train-status]"));
    let train: Vec<f64> = attr(&root, "[data-testid=loss-chart]", "data-train").split(',').map(|x| x.parse().unwrap()).collect();
    assert_eq!(train.len(), STEPS, "one training loss per step, none twice: {train:?}");
    let shown: f64 = attr(&root, "[data-testid=loss-chart]", "data-val").rsplit(',').next().unwrap().parse().unwrap();

    let studio = state.studio.get_untracked().unwrap();
    let (opts, settings) = state.form.parse(studio.config()).unwrap();
    let (_, losses, val, _) = unbroken_run(&studio, &opts, &settings).await;
    assert!((shown - val).abs() < 1e-5, "after stop and resume {shown}, unbroken {val}");
    assert_eq!(train.len(), losses.len(), "training losses {train:?} vs {losses:?}");
    for (a, b) in train.iter().zip(&losses) {
        assert!((a - b).abs() < 1e-4, "training losses {train:?} vs {losses:?}");
    }
}

/// A step whose gradients are not finite stops the page's loop: the page says what happened and
/// what to change, and keeps the adapter of the last good step — the engine's own run of the same
/// settings to that step, byte for byte. The NaN is what an overflow leaves in the network: put into
/// the final norm's weight while the run is stopped, so the next step's loss and gradients are NaN.
#[wasm_bindgen_test]
async fn a_non_finite_step_stops_the_page_and_keeps_the_last_good_adapter() {
    let (state, root) = mount(train_and_download).await;
    small_settings(&root, 12);
    type_into(&root, "#train-text", TEXT);
    until("the settings", 5.0, || root.query_selector("[data-testid=adapter-size]").unwrap().is_some()).await;
    find(&root, "[data-testid=train]").click();
    until("step 2", 300.0, || state.step.get_untracked() >= 2).await;
    find(&root, "[data-testid=stop]").click();
    until("the run to stop", 60.0, || attr(&root, "[data-testid=train-status]", "data-state") != "running").await;
    assert_eq!(attr(&root, "[data-testid=train-status]", "data-state"), "stopped", "{}", text_of(&root, "[data-testid=train-status]"));
    let kept = state.step.get_untracked();

    // The oracle, on the model before the NaN: the engine's run with the page's settings, to `kept`.
    let studio = state.studio.get_untracked().unwrap();
    let (opts, settings) = state.form.parse(studio.config()).unwrap();
    let mut run = studio.start(TEXT, &opts, settings).await.unwrap();
    for _ in 0..kept {
        studio.step(&mut run).await.unwrap();
    }
    let oracle = studio.snapshot(&run).await.unwrap();
    drop(run);
    studio.ctx.queue.write_buffer(&studio.model.final_norm.weight.buffer, 0, &f32::NAN.to_le_bytes());

    find(&root, "[data-testid=resume]").click();
    until("the next step", 120.0, || matches!(attr(&root, "[data-testid=train-status]", "data-state").as_str(), "finished" | "failed")).await;
    let status = text_of(&root, "[data-testid=train-status]");
    assert_eq!(attr(&root, "[data-testid=train-status]", "data-state"), "failed", "{status}");
    assert!(status.contains(&format!("step {} was not applied", kept + 1)) && status.contains("lower the learning rate"), "{status}");
    assert!(status.contains(&format!("The adapter as of step {kept} stays downloadable")), "{status}");
    assert_eq!(state.step.get_untracked(), kept, "the step counter shows the last applied step");
    // Resume would only repeat the same step: it is offered for a stopped run, not a failed one.
    assert_eq!(js_sys::Reflect::get(&find(&root, "[data-testid=resume]"), &"disabled".into()).unwrap().as_bool(), Some(true));

    // The download offers the best adapter by default (lowest validation loss, here step 0's):
    // choose the latest, the last good step's.
    find(&root, "[data-testid=download-latest]").click();
    find(&root, "[data-testid=download-zip]").click();
    until("the download", 30.0, || !text_of(&root, "[data-testid=adapter-message]").is_empty()).await;
    let message = text_of(&root, "[data-testid=adapter-message]");
    assert!(message.starts_with(&format!("Saved loratab-adapter-r4-step{kept}.zip")), "{message}");
    let downloaded = state.saved.get_untracked().unwrap().zip().unwrap();
    assert_eq!(oracle.step(), kept);
    assert!(downloaded == oracle.zip().unwrap(), "the kept adapter and its AdamW state are the engine's after step {kept}");
}

/// A learning rate so large that AdamW's update overflows (the gradients stay finite; the page
/// clips them): step 1 is refused, the page says to lower the learning rate, the counter stays at
/// 0, and the adapter kept is the untrained one — the engine's own, byte for byte, every value
/// finite, its AdamW state included.
#[wasm_bindgen_test]
async fn an_update_that_overflows_stops_the_page_and_keeps_the_last_good_adapter() {
    let (state, root) = mount(train_and_download).await;
    small_settings(&root, 12);
    type_into(&root, "#lr", "1e38");
    type_into(&root, "#train-text", TEXT);
    until("the settings", 5.0, || root.query_selector("[data-testid=adapter-size]").unwrap().is_some()).await;
    find(&root, "[data-testid=train]").click();
    until("the run to end", 300.0, || matches!(attr(&root, "[data-testid=train-status]", "data-state").as_str(), "finished" | "failed")).await;
    let status = text_of(&root, "[data-testid=train-status]");
    assert_eq!(attr(&root, "[data-testid=train-status]", "data-state"), "failed", "{status}");
    for want in ["step 1 was not applied", "infinite or NaN", "lower the learning rate", "The adapter as of step 0 stays downloadable"] {
        assert!(status.contains(want), "`{want}` missing from: {status}");
    }
    assert_eq!(state.step.get_untracked(), 0, "the refused step is not counted");

    let studio = state.studio.get_untracked().unwrap();
    let (opts, settings) = state.form.parse(studio.config()).unwrap();
    let run = studio.start(TEXT, &opts, settings).await.unwrap();
    let oracle = studio.snapshot(&run).await.unwrap();
    drop(run);
    let kept = state.saved.get_untracked().unwrap();
    assert_eq!(kept.step(), 0);
    let moments = kept.state.as_ref().unwrap().moments.values().map(|t| &t.data);
    let halves = kept.adapter.modules.values().flat_map(|p| [&p.a.data, &p.b.data]);
    assert!(halves.chain(moments).flatten().all(|v| v.is_finite()), "a kept value is not finite");
    assert!(kept.zip().unwrap() == oracle.zip().unwrap(), "the kept adapter and its AdamW state are the engine's untrained ones");
}

/// The browser storage the page keeps its run in: two handles are two tabs. A tab writes after the
/// record it last read or wrote; a write after another tab's is refused (unless it takes the record
/// over), so two tabs never interleave their runs. A page without IndexedDB gets a sentence.
#[wasm_bindgen_test]
async fn storage_keeps_one_tabs_run_and_refuses_a_second_writer() {
    use loratab::web::storage::{Storage, StorageError};
    let (a, b) = (Storage::open().await.unwrap(), Storage::open().await.unwrap());
    a.clear().await.unwrap();
    assert!(b.load().await.unwrap().is_none());
    a.save("a1", &[1], false).await.unwrap();
    let read = b.load().await.unwrap().unwrap();
    assert_eq!((read.meta.as_str(), read.adapter.as_slice()), ("a1", &[1u8][..]));
    a.save("a2", &[2, 2], false).await.unwrap();
    assert_eq!(b.save("b1", &[3], false).await, Err(StorageError::OtherTab), "b read a1, and a has written since");
    let c = Storage::open().await.unwrap();
    assert_eq!(c.load().await.unwrap().unwrap().meta, "a2", "the refused write changed nothing");
    b.save("b1", &[3], true).await.unwrap();
    assert_eq!(a.save("a3", &[4], false).await, Err(StorageError::OtherTab));
    let read = c.load().await.unwrap().unwrap();
    assert_eq!((read.meta.as_str(), read.adapter.as_slice()), ("b1", &[3u8][..]));
    c.clear().await.unwrap();
    assert!(a.load().await.unwrap().is_none());

    // Private browsing without storage: no IndexedDB at all.
    let window = web_sys::window().unwrap();
    let key = wasm_bindgen::JsValue::from_str("indexedDB");
    let own = js_sys::Object::get_own_property_descriptor(&window, &key);
    let hidden = js_sys::Object::new();
    js_sys::Reflect::set(&hidden, &"value".into(), &wasm_bindgen::JsValue::UNDEFINED).unwrap();
    js_sys::Reflect::set(&hidden, &"configurable".into(), &true.into()).unwrap();
    js_sys::Object::define_property(&window, &key, &hidden);
    let refused = Storage::open().await.err();
    if own.is_undefined() {
        js_sys::Reflect::delete_property(&window, &key).unwrap();
    } else {
        js_sys::Object::define_property(&window, &key, &own.unchecked_into());
    }
    let refused = refused.expect("no storage without IndexedDB");
    assert!(matches!(refused, StorageError::Unavailable(_)), "{refused:?}");
    assert!(refused.to_string().contains("Training is not affected"), "{refused}");
    assert!(Storage::open().await.is_ok(), "IndexedDB is back");
}

fn profile_table() -> impl IntoView {
    view! { <ProfileTable/> }
}

/// The figure in `data-ms` of the cell at `selector` (a number ≥ 0, or the test fails).
fn ms_of(root: &web_sys::HtmlElement, selector: &str) -> f64 {
    let ms: f64 = attr(root, selector, "data-ms").parse().unwrap_or_else(|_| panic!("no data-ms at {selector}"));
    assert!(ms.is_finite() && ms >= 0.0, "{selector}: {ms} ms");
    ms
}

/// "Where the time goes" (the GPU panel): settings the model cannot take get a sentence; at
/// settings it can, "Measure" fills one row per kernel kind for a training step and a generated
/// token, whose times are ≥ 0 and add up to the total, within the wall time; the matmul is tuned on
/// the way, each class's variant shown and kept in localStorage for the next load to reuse.
#[wasm_bindgen_test]
async fn the_profile_table_adds_up_and_the_matmul_is_tuned() {
    const STORE: &str = "loratab-matmul-tuning";
    storage("removeItem", &[STORE]);
    let (state, root) = mount(profile_table).await;
    // The page's default sequence length (128) is beyond llama-tiny's context of 64.
    find(&root, "[data-testid=profile-measure]").click();
    until("the settings' sentence", 10.0, || text_of(&root, "[data-testid=profile-error]").contains("context of 64 tokens")).await;

    state.form.batch.set("2".into());
    state.form.seq_len.set("16".into());
    state.form.rank.set("4".into());
    find(&root, "[data-testid=profile-measure]").click();
    until("the sentence gone", 10.0, || root.query_selector("[data-testid=profile-error]").unwrap().is_none()).await;
    until("the profile", 600.0, || root.query_selector("[data-testid=profile-table]").unwrap().is_some() || root.query_selector("[data-testid=profile-error]").unwrap().is_some()).await;
    assert_eq!(text_of(&root, "[data-testid=profile-error]"), "", "no error");
    let source = attr(&root, "[data-testid=profile-table]", "data-source");
    assert!(["GpuTimestamps", "WallPerDispatch"].contains(&source.as_str()), "{source}");
    assert!(text_of(&root, "[data-testid=profile-table] caption").contains("batch 2 × 16 tokens"));

    let rows = root.query_selector_all("[data-testid=profile-table] tbody tr").unwrap();
    let kinds: Vec<String> = (0..rows.length()).map(|i| rows.item(i).unwrap().unchecked_into::<web_sys::Element>().get_attribute("data-kind").unwrap()).collect();
    for (column, want) in [(2, &["matmul", "attention", "norms", "cross-entropy", "adamw"][..]), (3, &["matvec", "attention", "sampling"][..])] {
        let mut sum = 0.0;
        for kind in &kinds {
            let ms = ms_of(&root, &format!("[data-kind={kind}] td:nth-of-type({})", column - 1));
            let dispatches: usize = attr(&root, &format!("[data-kind={kind}] td:nth-of-type({})", column - 1), "data-dispatches").parse().unwrap();
            assert!(dispatches > 0 || ms == 0.0, "{kind}: {ms} ms in no dispatch");
            if want.contains(&kind.as_str()) {
                assert!(dispatches > 0, "{kind} has no dispatch in column {column}");
            }
            sum += ms;
        }
        let total = ms_of(&root, &format!("[data-testid=profile-total] td:nth-of-type({})", column - 1));
        let wall: f64 = attr(&root, &format!("[data-testid=profile-total] td:nth-of-type({})", column - 1), "data-wall-ms").parse().unwrap();
        assert!(total > 0.0 && (sum - total).abs() <= 1e-9 * total, "column {column}: rows add up to {sum} ms, total {total} ms");
        assert!(total <= wall * 1.02 + 0.5, "column {column}: {total} ms of GPU time in {wall} ms wall");
    }

    // Tuned on the way: a variant per class, the same choices stored for this device.
    let names: Vec<&str> = loratab::gpu::tune::VARIANTS.iter().map(|v| v.name).collect();
    let shown = root.query_selector_all("[data-testid=matmul-variant]").unwrap();
    assert!(shown.length() > 0, "no tuned class shown");
    for i in 0..shown.length() {
        let v = shown.item(i).unwrap().text_content().unwrap();
        assert!(names.contains(&v.as_str()), "{v}");
    }
    let studio = state.studio.get_untracked().unwrap();
    let choices = studio.ctx.choices();
    assert_eq!(choices.len(), shown.length() as usize);
    let stored = storage("getItem", &[STORE]).as_string().expect("the choices are stored");
    for c in &choices {
        assert!(c.gflops.is_some_and(|g| g > 0.0), "{c:?} was timed in this session");
        assert!(stored.contains(&c.class) && stored.contains(c.variant), "{c:?} not in {stored}");
    }
    // A new load on this device reuses them without timing anything.
    let files = ModelFiles { config: CONFIG.into(), weights: vec![("model.safetensors".into(), WEIGHTS.to_vec())], tokenizer: TOKENIZER.to_vec(), ..Default::default() };
    let again = Studio::load(gpu().await, files, "llama-tiny").await.unwrap();
    assert!(again.use_stored_tuning());
    let reused: Vec<_> = again.ctx.choices().into_iter().map(|c| (c.class, c.variant, c.gflops)).collect();
    assert_eq!(reused, choices.iter().map(|c| (c.class.clone(), c.variant, None)).collect::<Vec<_>>());
    storage("removeItem", &[STORE]);
}

/// Call `localStorage.method(args…)`.
fn storage(method: &str, args: &[&str]) -> wasm_bindgen::JsValue {
    let storage = js_sys::Reflect::get(&web_sys::window().unwrap(), &"localStorage".into()).unwrap();
    let f: js_sys::Function = js_sys::Reflect::get(&storage, &method.into()).unwrap().unchecked_into();
    f.apply(&storage, &args.iter().map(|a| wasm_bindgen::JsValue::from_str(a)).collect()).unwrap()
}
