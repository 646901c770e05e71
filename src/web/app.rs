use leptos::prelude::*;

use super::GpuPanel;

/// The whole page.
#[component]
pub fn App() -> impl IntoView {
    view! {
        <main>
            <h1>"loratab"</h1>
            <p class="tagline">
                "Fine-tune a small transformer with LoRA on your own GPU, in this tab, and download only the adapter."
            </p>
            <GpuPanel/>
        </main>
    }
}
