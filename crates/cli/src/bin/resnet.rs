//! `resnet`: train, evaluate, inspect and benchmark ResNet image classifiers on one machine.

use clap::Parser;
use resnet_cli::{args, cmd_bench, cmd_eval, cmd_export, cmd_info, cmd_train};

fn main() -> std::process::ExitCode {
    let cli = args::Cli::parse();
    resnet_cli::init_logging(&cli.log_format);
    let result = match cli.command {
        args::Command::Train(a) => cmd_train::run(*a),
        args::Command::Eval(a) => cmd_eval::run(a),
        args::Command::Info(a) => cmd_info::run(a),
        args::Command::Bench(a) => cmd_bench::run(a),
        args::Command::Export(a) => cmd_export::run(a),
        args::Command::Report(a) => resnet_cli::report::run(*a),
        args::Command::Sweep(a) => resnet_cli::cmd_sweep::run(*a),
        args::Command::Schedule(a) => resnet_cli::cmd_schedule::run(*a),
        args::Command::Profile(a) => resnet_cli::cmd_profile::run(a),
        args::Command::Scaling(a) => resnet_cli::cmd_scaling::run(*a),
        args::Command::BenchAllreduce(a) => resnet_cli::cmd_allreduce::run(a),
        args::Command::ConvCheck(a) => resnet_cli::cmd_conv_check::run(*a),
    };
    resnet_cli::exit(result)
}
