use leptos::prelude::*;
use leptos::task::spawn_local;

use super::state::AppState;
use super::{AdapterPanel, GpuAlert, SavedRun, ComparePanel, GpuPanel, ModelPanel, RankDemo, SettingsPanel, TextPanel, TrainPanel};

/// The whole page: the state is created here and shared with every panel; the default model
/// starts loading at once.
#[component]
pub fn App() -> impl IntoView {
    let state = AppState::new().provide();
    // The stored run is looked up while the default model loads; Resume waits for the GPU.
    spawn_local(state.open_storage());
    spawn_local(state.load_default());
    let (opened, set_opened) = signal(false);
    view! {
        <main>
            <header>
                <h1>"loratab"</h1>
                <p class="tagline">
                    "Fine-tune a small transformer with LoRA on your own GPU, in this tab, and download only the adapter."
                </p>
            </header>
            <GpuAlert/>
            <SavedRun/>
            <Panels/>
            // The self-test opens a second GPU device, so it runs only when asked for.
            <details class="gpu" on:toggle=move |_| set_opened.set(true)>
                <summary data-testid="gpu-summary">"GPU self-test"</summary>
                {move || opened.get().then(|| view! { <GpuPanel/> })}
            </details>
        </main>
    }
}

/// Every panel, in the order a user goes through them (also what component tests mount).
#[component]
pub fn Panels() -> impl IntoView {
    view! {
        <div class="columns">
            <div>
                <ModelPanel/>
                <TextPanel/>
                <SettingsPanel/>
            </div>
            <div>
                <TrainPanel/>
                <ComparePanel/>
                <AdapterPanel/>
            </div>
        </div>
        <RankDemo/>
    }
}
