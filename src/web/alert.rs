//! The page-wide alert: a GPU problem that stops everything (a lost device), said in a sentence,
//! with the one action that recovers from it.

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::state::AppState;

#[component]
pub fn GpuAlert() -> impl IntoView {
    let state = AppState::get();
    let reload = move |_| spawn_local(state.reload());
    move || {
        state.alert.get().map(|a| {
            view! {
                <div class="alert status-failed" role="alert" data-testid="alert">
                    <p>{a}</p>
                    <button type="button" data-testid="reload" on:click=reload prop:disabled=move || state.busy.get().is_some()>
                        "Reload the model"
                    </button>
                </div>
            }
        })
    }
}
