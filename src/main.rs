//! The `loratab` binary: the native CLI, or, built for wasm32 by Trunk, the web app's entry point.

#[cfg(target_arch = "wasm32")]
fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(loratab::web::App);
}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use clap::{Parser, Subcommand};
    use loratab::gpu::GpuContext;
    use std::process::ExitCode;

    #[derive(Parser)]
    #[command(name = "loratab", version, about = "LoRA fine-tuning of small transformers on your GPU")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Show the GPU adapter loratab will use and run the GPU self-test against the CPU reference.
        Info {
            /// Print one JSON object instead of text.
            #[arg(long)]
            json: bool,
        },
    }

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        match cli.command {
            Command::Info { json } => pollster::block_on(info(json)),
        }
    }

    async fn info(json: bool) -> ExitCode {
        let ctx = match GpuContext::new().await {
            Ok(ctx) => ctx,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let adapter = ctx.adapter();
        let checks = match loratab::selftest::run(&ctx).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: the self-test could not run: {e}");
                return ExitCode::FAILURE;
            }
        };
        let passed = checks.iter().all(|c| c.passed);
        if json {
            let out = serde_json::json!({ "adapter": adapter, "checks": checks, "passed": passed });
            println!("{out}");
        } else {
            println!("GPU: {} ({}, {}) driver {}", adapter.name, adapter.backend, adapter.device_type, adapter.driver);
            println!(
                "limits: buffer {} MiB, storage binding {} MiB, workgroup memory {} KiB",
                adapter.max_buffer_size >> 20,
                adapter.max_storage_binding >> 20,
                adapter.max_workgroup_storage >> 10
            );
            for c in &checks {
                let verdict = if c.passed { "ok  " } else { "FAIL" };
                println!("{verdict} {:<32} max error {:.2e} (tolerance {:.0e})", c.name, c.max_error, c.tolerance);
            }
            println!("self-test {}", if passed { "passed" } else { "FAILED" });
        }
        if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    }
}
