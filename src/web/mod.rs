//! The browser app (Leptos, client-side rendered, built by Trunk). Components live in their own
//! modules and share [`AppState`]; they call the engine ([`crate::studio`]) through it and never
//! touch GPU buffers.

mod adapter_panel;
mod alert;
mod app;
pub mod browser;
mod chart;
mod compare_panel;
pub mod examples;
mod examples_panel;
mod format;
mod gpu_panel;
mod model_panel;
pub mod persist;
mod rank_demo;
mod settings_panel;
pub mod state;
pub mod storage;
mod text_panel;
mod train_panel;

pub use adapter_panel::AdapterPanel;
pub use alert::GpuAlert;
pub use app::{App, Panels};
pub use chart::{LineChart, Series};
pub use compare_panel::ComparePanel;
pub use gpu_panel::{GpuPanel, GpuStatus, ProfileTable};
pub use model_panel::ModelPanel;
pub use persist::{SavedNote, SavedRun};
pub use rank_demo::RankDemo;
pub use settings_panel::SettingsPanel;
pub use state::AppState;
pub use text_panel::TextPanel;
pub use train_panel::TrainPanel;
