//! The browser app (Leptos, client-side rendered, built by Trunk). Components live in their own
//! modules and talk to the engine through async library calls; none of them touches GPU buffers.

mod app;
mod gpu_panel;

pub use app::App;
pub use gpu_panel::{GpuPanel, GpuStatus};
