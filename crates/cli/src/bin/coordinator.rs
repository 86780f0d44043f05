//! `coordinator`: the cluster's control plane (see `coordinator --help`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    resnet_kernels::memory::keep_freed_memory();
    let cli = resnet_cli::cmd_coordinator::CoordinatorCli::parse();
    resnet_cli::init_logging(&cli.log_format);
    resnet_cli::exit(resnet_cli::cmd_coordinator::run_coordinator(cli))
}
