//! The model: the default loads by itself; the user may load SmolLM2-135M (a GGUF served next to
//! the page when ./dev setup fetched it), pick files, a folder, a zip or a GGUF file, or drop them
//! here, and choose the frozen weights' format. Shows name, architecture, parameter count, the
//! frozen weights' formats and GPU bytes, and the training memory estimate.

use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::JsCast;

use super::browser;
use super::format;
use super::state::{AppState, ModelStatus};
use crate::model::WeightFormat;
use crate::studio::{is_gguf, model_files, ModelSource};

/// The name to show for chosen files: the folder holding config.json, else a zip's name.
fn model_name(files: &[(String, Vec<u8>)]) -> String {
    let paths = || files.iter().map(|(p, _)| p.as_str());
    let folder = paths().find(|p| p.rsplit('/').next() == Some("config.json")).and_then(|p| p.rsplit('/').nth(1));
    let zip = || paths().find_map(|p| p.rsplit('/').next()?.strip_suffix(".zip"));
    folder.or_else(zip).unwrap_or("your model").to_string()
}

/// Load the chosen or dropped files as the model.
async fn load_files(state: AppState, chosen: Result<browser::Chosen, String>) {
    let mut chosen = match chosen {
        Ok(c) => c,
        Err(e) => return state.model_status.set(ModelStatus::Failed(format!("The files could not be read: {e}."))),
    };
    // A GGUF is a whole model in one file: it wins over anything chosen with it.
    if let Some(i) = chosen.files.iter().position(|(n, _)| is_gguf(n)) {
        let (path, bytes) = chosen.files.swap_remove(i);
        let name = path.rsplit('/').next().unwrap_or(&path).to_string();
        let source = ModelSource::Gguf { file_name: name.clone(), bytes: bytes.into() };
        return state.load_model(source, name, state.chosen_format()).await;
    }
    let name = model_name(&chosen.files);
    match model_files(chosen.files) {
        Ok(files) => state.load_model(files.into(), name, state.chosen_format()).await,
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
        let estimate = move || {
            let studio = state.studio.get()?;
            state.form.parse(studio.config()).ok().and_then(|(o, s)| studio.memory(&o, &s).ok())
        };
        let memory = move || {
            let est = estimate()?;
            Some(format!(
                "{} (weights {}, activations {}, adapter and AdamW {})",
                format::mib(est.total()),
                format::mib(est.weights),
                format::mib(est.activations),
                format::mib(est.adapter + est.optimizer)
            ))
        };
        // What the GPU held once the current run was set up, beside the estimate for its settings.
        let measured = move || {
            state.train_bytes.get().map(|b| {
                view! { <dt>"GPU memory of this run"</dt><dd data-testid="train-bytes" data-bytes=b>{format!("{} measured", format::mib(b))}</dd> }
            })
        };
        let frozen = match studio.frozen() {
            Some(f) => format!("{} (converted to {f} at load)", i.formats_text()),
            None => format!("{} (as stored)", i.formats_text()),
        };
        Some(view! {
            <dl>
                <dt>"Name"</dt><dd data-testid="model-name">{i.name}</dd>
                <dt>"Source"</dt><dd data-testid="model-source">{i.source}</dd>
                <dt>"Architecture"</dt><dd>{i.architecture}" ("{i.model_type}")"</dd>
                <dt>"Parameters"</dt><dd data-testid="model-params">{format::count(i.params)}</dd>
                <dt>"Shape"</dt><dd>{format!("{} layers × {} wide, vocabulary {}, context {} tokens", i.layers, i.hidden, format::count(i.vocab), i.context)}</dd>
                <dt>"Frozen weights"</dt><dd data-testid="weight-formats">{frozen}</dd>
                <dt>"Frozen weights on the GPU"</dt><dd data-testid="weight-bytes" data-bytes=i.weight_bytes>{format!("{} measured", format::mib(i.weight_bytes))}</dd>
                <dt>"GPU memory to train"</dt>
                <dd data-testid="memory" data-bytes=move || estimate().map(|e| e.total())>{move || memory().unwrap_or_else(|| "— (check the settings)".into())}</dd>
                {measured}
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
    let smollm2 = move |_| spawn_local(state.load_smollm2());
    // The select's values are WeightFormat names; "" keeps what the file stores.
    let formats = ["f32", "f16", "q8_0", "q4_0"].map(|f| WeightFormat::parse(f).expect("a format name").name());
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
                <p>"Use another model: drop a Hugging Face model folder or its files here (config.json, model.safetensors, tokenizer.json), or a llama GGUF file (F32, F16, BF16, Q8_0, Q4_0, Q4_1), or"</p>
                <label>"choose files "<input type="file" multiple accept=".json,.safetensors,.zip,.gguf" on:change=on_pick prop:disabled=busy/></label>
                <label>" or a folder "<input type="file" node_ref=folder_input on:change=on_pick prop:disabled=busy/></label>
                <button type="button" on:click=reload prop:disabled=busy>"Reload the default model"</button>
                <button type="button" data-testid="load-smollm2" on:click=smollm2 prop:disabled=busy>"Load SmolLM2-135M-Instruct (Q4_1 GGUF, 94 MB)"</button>
                <p>
                    <label>"Frozen weights "
                        <select data-testid="frozen-format" prop:value=move || state.frozen.get() prop:disabled=busy
                            on:change=move |ev| state.frozen.set(event_target_value(&ev))>
                            <option value="">"as stored"</option>
                            {formats.map(|f| view! { <option value=f>{f}</option> })}
                        </select>
                    </label>
                    " (applies at the next load, like load_in_8bit / load_in_4bit: the frozen matrices only; the adapter trains in f32)"
                </p>
            </div>
        </section>
    }
}
