//! The model: the default loads by itself; the user may pick files, a folder or a zip, or drop
//! them here. Shows name, architecture, parameter count and the training memory estimate.

use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::JsCast;

use super::browser;
use super::format;
use super::state::{AppState, ModelStatus};
use crate::studio::model_files;

/// The name to show for chosen files: the folder holding config.json, else a zip's name.
fn model_name(files: &[(String, Vec<u8>)]) -> String {
    let paths = || files.iter().map(|(p, _)| p.as_str());
    let folder = paths().find(|p| p.rsplit('/').next() == Some("config.json")).and_then(|p| p.rsplit('/').nth(1));
    let zip = || paths().find_map(|p| p.rsplit('/').next()?.strip_suffix(".zip"));
    folder.or_else(zip).unwrap_or("your model").to_string()
}

/// Load the chosen or dropped files as the model.
async fn load_files(state: AppState, chosen: Result<browser::Chosen, String>) {
    let chosen = match chosen {
        Ok(c) => c,
        Err(e) => return state.model_status.set(ModelStatus::Failed(format!("The files could not be read: {e}."))),
    };
    let name = model_name(&chosen.files);
    match model_files(chosen.files) {
        Ok(files) => state.load_model(files, name).await,
        Err(e) => {
            // PyTorch-only folders are common: say how to get safetensors.
            let pytorch = chosen.skipped.iter().any(|n| n.ends_with(".bin") || n.ends_with(".pt") || n.ends_with(".pth"));
            let hint = if pytorch {
                " These files hold PyTorch weights (.bin): loratab reads safetensors; convert them with transformers (model.save_pretrained(dir, safe_serialization=True))."
            } else {
                ""
            };
            state.model_status.set(ModelStatus::Failed(format!("Those files are not a model: {e}.{hint}")))
        }
    }
}

fn load_list(state: AppState, list: web_sys::FileList) {
    spawn_local(async move { load_files(state, browser::read_files(&list).await).await });
}

#[component]
pub fn ModelPanel() -> impl IntoView {
    let state = AppState::get();
    let status = move || {
        let s = state.model_status.get();
        let text = match &s {
            ModelStatus::Loading(t) | ModelStatus::Failed(t) => t.clone(),
            ModelStatus::Ready => "Model loaded on the GPU.".into(),
        };
        view! { <p data-testid="model-status" data-state=s.label() class=format!("status-{}", s.label()) role="status">{text}</p> }
    };
    let info = move || {
        let studio = state.studio.get()?;
        let i = studio.info.clone();
        let memory = move || {
            let studio = state.studio.get()?;
            let est = state.form.parse(studio.config()).ok().and_then(|(o, s)| studio.memory(&o, &s).ok())?;
            Some(format!(
                "{} (weights {}, activations {}, adapter and AdamW {})",
                format::mib(est.total()),
                format::mib(est.weights),
                format::mib(est.activations),
                format::mib(est.adapter + est.optimizer)
            ))
        };
        Some(view! {
            <dl>
                <dt>"Name"</dt><dd data-testid="model-name">{i.name}</dd>
                <dt>"Architecture"</dt><dd>{i.architecture}" ("{i.model_type}")"</dd>
                <dt>"Parameters"</dt><dd data-testid="model-params">{format::count(i.params)}</dd>
                <dt>"Shape"</dt><dd>{format!("{} layers × {} wide, vocabulary {}, context {} tokens", i.layers, i.hidden, format::count(i.vocab), i.context)}</dd>
                <dt>"GPU memory to train"</dt><dd data-testid="memory">{move || memory().unwrap_or_else(|| "— (check the settings)".into())}</dd>
            </dl>
        })
    };
    let busy = move || state.busy.get().is_some();
    let on_pick = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = event_target(&ev);
        if let Some(list) = input.files() {
            load_list(state, list);
        }
    };
    let (over, set_over) = signal(false);
    let on_drop = move |ev: leptos::ev::DragEvent| {
        ev.prevent_default();
        set_over.set(false);
        if state.busy.get_untracked().is_some() {
            return; // the pickers are disabled then too
        }
        // Taken now: the browser empties the DataTransfer once this handler returns.
        let Some(dropped) = ev.data_transfer().as_ref().and_then(browser::dropped) else { return };
        spawn_local(async move { load_files(state, browser::read_dropped(dropped).await).await });
    };
    let reload = move |_| spawn_local(state.load_default());
    let folder_input = NodeRef::<leptos::html::Input>::new();
    // `webkitdirectory` makes the second picker choose a whole folder (every browser supports it).
    Effect::new(move |_| {
        if let Some(input) = folder_input.get() {
            let el: &web_sys::Element = input.unchecked_ref();
            let _ = el.set_attribute("webkitdirectory", "");
        }
    });
    view! {
        <section aria-labelledby="model-heading">
            <h2 id="model-heading">"1. Model"</h2>
            {status}
            {info}
            <div data-testid="dropzone" class=move || if over.get() { "dropzone over" } else { "dropzone" }
                on:dragover=move |ev: leptos::ev::DragEvent| { ev.prevent_default(); set_over.set(true); }
                on:dragleave=move |_| set_over.set(false)
                on:drop=on_drop>
                <p>"Use another model: drop a Hugging Face model folder or its files here (config.json, model.safetensors, tokenizer.json), or"</p>
                <label>"choose files "<input type="file" multiple accept=".json,.safetensors,.zip" on:change=on_pick prop:disabled=busy/></label>
                <label>" or a folder "<input type="file" node_ref=folder_input on:change=on_pick prop:disabled=busy/></label>
                <button type="button" on:click=reload prop:disabled=busy>"Reload the default model"</button>
            </div>
        </section>
    }
}
