//! Downloads and uploads: the adapter in PEFT's format (one zip, or its two files), an adapter
//! loaded from files to compare with or to train further, and the merged model.

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::browser::{self, save_bytes};
use super::format;
use super::state::{AppState, DataMode};

#[component]
pub fn AdapterPanel() -> impl IntoView {
    let state = AppState::get();
    let message = RwSignal::new(None::<(bool, String)>);
    let report = move |r: Result<String, String>| message.set(Some(match r {
        Ok(m) => (true, m),
        Err(e) => (false, e),
    }));
    // The best adapter of the run (lowest validation loss) is downloaded unless "latest" is chosen.
    let latest = RwSignal::new(false);
    let best = move || if latest.get() { None } else { state.data.best.get() };
    // The latest first refreshes the snapshot when the GPU is free, so it holds the newest adapter.
    let download = move |what: &'static str| {
        spawn_local(async move {
            let chosen = match best() {
                Some(b) => Some(b.adapter),
                None => state.fresh_snapshot().await,
            };
            let Some(saved) = chosen else {
                return report(Err("Train or load an adapter first.".into()));
            };
            let tag = format!("r{}-step{}", saved.adapter.config.r, saved.step());
            let result = match what {
                "zip" => saved.zip().map(|b| (format!("loratab-adapter-{tag}.zip"), b, "application/zip")),
                "config" => saved.peft_files().map(|(c, _)| ("adapter_config.json".to_string(), c.into_bytes(), "application/json")),
                "weights" => saved.peft_files().map(|(_, w)| ("adapter_model.safetensors".to_string(), w, "application/octet-stream")),
                "trl" => {
                    let Some(studio) = state.studio.get_untracked() else {
                        return report(Err("The export needs the base model loaded: reload it first.".into()));
                    };
                    let settings = match state.form.parse(studio.config()) {
                        Ok((_, s)) => s,
                        Err(e) => return report(Err(e)),
                    };
                    let set = untrack(|| state.data.gather().set);
                    studio.trl_export_zip(&set, &saved, &settings).map(|b| (format!("loratab-trl-{tag}.zip"), b, "application/zip"))
                }
                _ => {
                    let Some(studio) = state.studio.get_untracked() else {
                        return report(Err("The merged model needs the base model loaded: reload it first.".into()));
                    };
                    browser::yield_now().await;
                    studio.merged_model_zip(&saved.adapter).map(|b| (format!("{}-merged-{tag}.zip", studio.info.name), b, "application/zip"))
                }
            };
            report(
                result
                    .map_err(|e| format!("The download could not be made: {e}."))
                    .and_then(|(name, bytes, mime)| {
                        save_bytes(&name, &bytes, mime)?;
                        Ok(format!("Saved {name} ({}).", format::bytes(bytes.len() as u64)))
                    }),
            );
        });
    };
    let on_pick = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = event_target(&ev);
        let Some(list) = input.files() else { return };
        spawn_local(async move {
            let result = async {
                let files = browser::read_files(&list).await?.files;
                let step = state.use_adapter(files).await.map_err(|e| format!("That adapter cannot be used: {e}."))?;
                Ok::<_, String>(format!("Adapter loaded (step {step}): compare with it, or raise the steps and press Resume to train it further."))
            };
            report(result.await);
        });
    };
    let none = move || state.saved.get().is_none() && state.run.with_value(|r| r.is_none());
    let summary = move || {
        state.saved.get().map(|s| {
            let c = &s.adapter.config;
            format!("Latest adapter: rank {}, α {}, on {}, step {}.", c.r, c.lora_alpha, c.target_modules.join(", "), s.step())
        })
    };
    let which = move || {
        state.data.best.get().map(|b| {
            let latest_step = state.saved.get().map(|s| s.step()).unwrap_or(b.step);
            view! {
                <fieldset data-testid="which-adapter">
                    <legend>"Download"</legend>
                    <label class="check"><input type="radio" name="which-adapter" data-testid="download-best"
                        prop:checked=move || !latest.get() on:change=move |_| latest.set(false)/>
                        {format!("the best adapter: step {}, validation loss {:.4}", b.step, b.loss)}</label>
                    <label class="check"><input type="radio" name="which-adapter" data-testid="download-latest"
                        prop:checked=move || latest.get() on:change=move |_| latest.set(true)/>
                        {format!("the latest: step {latest_step}")}</label>
                </fieldset>
            }
        })
    };
    view! {
        <section aria-labelledby="adapter-heading">
            <h2 id="adapter-heading">"6. Download or load an adapter"</h2>
            <p data-testid="saved-summary">{summary}</p>
            {which}
            <div class="buttons">
                <button type="button" data-testid="download-zip" on:click=move |_| download("zip") prop:disabled=none>"Download adapter (PEFT, .zip)"</button>
                <button type="button" on:click=move |_| download("config") prop:disabled=none>"adapter_config.json"</button>
                <button type="button" on:click=move |_| download("weights") prop:disabled=none>"adapter_model.safetensors"</button>
                <button type="button" data-testid="download-merged" on:click=move |_| download("merged") prop:disabled=none>"Download merged model (.zip)"</button>
                {move || (state.data.mode.get() == DataMode::Examples).then(|| view! {
                    <button type="button" data-testid="download-trl" on:click=move |_| download("trl") prop:disabled=none>"Export for TRL + PEFT (.zip)"</button>
                })}
            </div>
            {move || (state.data.mode.get() == DataMode::Examples).then(|| view! {
                <p class="hint">"The TRL export holds the examples as split here, the adapter chosen above as the starting point, and train_trl.py, which trains on with SFTTrainer + PEFT using the same template, masking and settings (python train_trl.py)."</p>
            })}
            <p class="hint">"The zip holds PEFT's two files (load with PeftModel.from_pretrained) and training_state.safetensors, which lets loratab continue exactly."</p>
            <label>"Load an adapter (its two files or a zip) "
                <input type="file" multiple accept=".json,.safetensors,.zip" on:change=on_pick
                    prop:disabled=move || state.studio.get().is_none() || state.busy.get().is_some()/></label>
            {move || message.get().map(|(ok, m)| view! {
                <p data-testid="adapter-message" class=if ok { "" } else { "status-failed" } role=if ok { "status" } else { "alert" }>{m}</p>
            })}
        </section>
    }
}
