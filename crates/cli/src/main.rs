//! `resnet`: train, evaluate, inspect and benchmark ResNet image classifiers on one machine.

mod args;
mod cmd_bench;
mod cmd_eval;
mod cmd_info;
mod cmd_train;
mod device;
mod progress;
mod settings;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = args::Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let result = match cli.command {
        args::Command::Train(a) => cmd_train::run(*a),
        args::Command::Eval(a) => cmd_eval::run(a),
        args::Command::Info(a) => cmd_info::run(a),
        args::Command::Bench(a) => cmd_bench::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
