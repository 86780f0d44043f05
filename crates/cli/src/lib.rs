//! The binaries' shared code: argument definitions, layered configuration, device choice,
//! progress output, and the command implementations of `resnet`, `coordinator` and `worker`.

pub mod args;
pub mod cluster;
pub mod cluster_sweep;
pub mod cmd_allreduce;
pub mod cmd_bench;
pub mod cmd_conv_check;
pub mod cmd_eval;
pub mod cmd_export;
pub mod cmd_info;
pub mod cmd_profile;
pub mod cmd_schedule;
pub mod cmd_sweep;
pub mod cmd_train;
pub mod device;
pub mod kernel_cache;
pub mod kernels;
pub mod progress;
pub mod report;
pub mod settings;

use tracing_subscriber::EnvFilter;

/// Diagnostics on stderr: human-readable by default, `json` for log pipelines; `RUST_LOG`
/// filters (default `info`).
pub fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Prints an error chain and maps the result to an exit code.
pub fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
