//! `resnet`: train, evaluate, inspect and benchmark ResNet image classifiers on one machine.

use clap::Parser;
use resnet_cli::{cmd_bench, cmd_eval, cmd_export, cmd_info, cmd_train, command};

fn main() -> std::process::ExitCode {
    resnet_kernels::memory::keep_freed_memory();
    let cli = command::Cli::parse();
    resnet_cli::init_logging(&cli.log_format);
    let result = match cli.command {
        command::Command::Train(a) => cmd_train::run(*a),
        command::Command::Eval(a) => cmd_eval::run(a),
        command::Command::Info(a) => cmd_info::run(a),
        command::Command::Bench(a) => cmd_bench::run(a),
        command::Command::Export(a) => cmd_export::run(a),
        command::Command::Report(a) => resnet_cli::report::run(*a),
        command::Command::Sweep(a) => resnet_cli::cmd_sweep::run(*a),
        command::Command::Schedule(a) => resnet_cli::cmd_schedule::run(*a),
        command::Command::Profile(a) => resnet_cli::cmd_profile::run(a),
        command::Command::Scaling(a) => resnet_cli::cmd_scaling::run(*a),
        command::Command::BenchAllreduce(a) => resnet_cli::cmd_allreduce::run(a),
        command::Command::ConvCheck(a) => resnet_cli::cmd_conv_check::run(*a),
    };
    resnet_cli::exit(result)
}
