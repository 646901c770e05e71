//! The model: the default loads by itself; the user may pick files, a folder or a zip, or drop
//! them here. Shows name, architecture, parameter count and the training memory estimate.

use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::JsCast;

use super::format;
use super::state::{AppState, ModelStatus};
use crate::studio::model_files;

/// Read the chosen or dropped files and load them as the model.
fn load_list(state: AppState, list: web_sys::FileList) {
    spawn_local(async move {
        let files = match super::browser::read_files(&list).await {
            Ok(f) => f,
            Err(e) => return state.model_status.set(ModelStatus::Failed(e)),
        };
        // A picked folder's name, else the first file's.
        let name = files.first().map(|(n, _)| n.rsplit_once('/').map_or("your model", |(d, _)| d).to_string()).unwrap_or_default();
        match model_files(files) {
            Ok(files) => state.load_model(files, name).await,
            Err(e) => state.model_status.set(ModelStatus::Failed(format!("Those files are not a model: {e}."))),
        }
    });
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
        if let Some(list) = ev.data_transfer().and_then(|d| d.files()) {
            load_list(state, list);
        }
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
            <div class=move || if over.get() { "dropzone over" } else { "dropzone" }
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
