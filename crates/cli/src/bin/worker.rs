//! `worker`: one data-parallel replica (see `worker --help`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    resnet_kernels::memory::keep_freed_memory();
    let cli = resnet_cli::cmd_worker::WorkerCli::parse();
    resnet_cli::init_logging(&cli.log_format);
    resnet_cli::exit(resnet_cli::cmd_worker::run_worker_cli(cli))
}
