//! The binaries' shared code: argument definitions, layered configuration, device choice,
//! progress output, and the command implementations of `resnet`, `coordinator` and `worker`.

pub mod args;
pub mod bn_check;
pub mod cluster_security;
pub mod cluster_sweep;
pub mod cmd_allreduce;
pub mod cmd_bench;
pub mod cmd_conv_check;
pub mod cmd_coordinator;
pub mod cmd_eval;
pub mod cmd_export;
pub mod cmd_info;
pub mod cmd_profile;
pub mod cmd_scaling;
pub mod cmd_schedule;
pub mod cmd_sweep;
pub mod cmd_train;
pub mod cmd_worker;
pub mod command;
pub mod device;
pub mod endpoint;
pub mod kernel_cache;
pub mod kernels;
pub mod optim_check;
pub mod progress;
pub mod report;
pub mod run_values;
pub mod settings;
pub mod supervise;

/// An environment for the tests of code that takes one as a lookup function.
#[cfg(test)]
pub(crate) mod test_env {
    /// Looks names up in `pairs`.
    pub fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }
}

use tracing_subscriber::EnvFilter;

/// Diagnostics on stderr: human-readable by default (coloured only on a terminal without
/// `NO_COLOR`), `json` for log pipelines; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let _ = JSON_LOGS.set(format == "json");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: not into pipes, files or log collectors, and
    // never when NO_COLOR is set (https://no-color.org).
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Set once by [`init_logging`]: whether every line must be a JSON object.
static JSON_LOGS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether `--log-format json` is in effect.
pub fn json_logs() -> bool {
    JSON_LOGS.get().copied().unwrap_or(false)
}

/// One line for the person watching (progress, a summary, where files went): on stderr as
/// text, or, with `--log-format json`, as a tracing event, so that stderr holds JSON lines
/// only. Use through [`say!`].
pub fn say_line(args: std::fmt::Arguments) {
    if json_logs() {
        tracing::info!(target: "resnet", "{args}");
    } else {
        eprintln!("{args}");
    }
}

/// `eprintln!` that respects `--log-format json` (see [`say_line`]).
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {
        $crate::say_line(format_args!($($t)*))
    };
}

/// Exit code of a run stopped because training diverged (a non-finite loss under
/// `on_nonfinite = stop`, or too many skipped steps): retrying the same command will diverge
/// again, unlike a crash (1).
pub const EXIT_DIVERGED: u8 = 3;

/// Exit code of a run stopped by SIGTERM or SIGINT after saving a checkpoint: retrying with
/// `--resume latest` (or `--resume auto`) continues it.
pub const EXIT_INTERRUPTED: u8 = 4;

/// Exit code of a run that stopped because its checkpoints could not be written (too many in a
/// row, or the final one): the newest checkpoint on disk is older than the run's state. Fix the
/// storage, then resume.
pub const EXIT_CHECKPOINT_LOST: u8 = 5;

/// The exit codes as `--help` shows them (after the options). deploy/verify reads this to check
/// the manifests' `podFailurePolicy` against the binaries; a unit test ties it to the constants.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  the run finished and its final state is stored
  1  any other failure (the message names the field, file or peer)
  2  usage error: unknown flag or bad value (do not retry)
  3  training diverged: a non-finite loss or gradient (do not retry: lower the LR)
  4  interrupted by SIGTERM/SIGINT with its state saved, or a worker that left its group (retry: --resume auto continues)
  5  checkpoints could not be written (retry after fixing the storage)";

/// A failure that carries the exit code to end with (a supervisor passing on its children's).
#[derive(Debug)]
pub struct ExitWith(pub u8, pub String);

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for ExitWith {}

/// A run that stopped on a signal with its state saved (exit code [`EXIT_INTERRUPTED`]).
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Sets the returned flag on the first SIGTERM or SIGINT, for a loop to stop at its next step
/// boundary and save; a second SIGINT (Ctrl-C again) ends the process at once.
pub fn stop_on_signals() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Order matters: the conditional shutdown sees the flag before the second handler sets it.
    signal_hook::flag::register_conditional_shutdown(SIGINT, 130, flag.clone())?;
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(flag)
}

/// The exit code for an error: [`EXIT_DIVERGED`] when the training diverged anywhere in its
/// chain, [`EXIT_CHECKPOINT_LOST`] when its checkpoints could not be written,
/// [`EXIT_INTERRUPTED`] for a run stopped by a signal, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    use resnet_train::TrainError;
    // A worker that left its group on a signal was interrupted too: its pod may be restarted
    // and join the running job.
    let left = |c: &(dyn std::error::Error + 'static)| {
        matches!(
            c.downcast_ref::<resnet_worker::WorkerError>(),
            Some(resnet_worker::WorkerError::Left { .. })
        )
    };
    if let Some(ExitWith(code, _)) = e.chain().find_map(|c| c.downcast_ref::<ExitWith>()) {
        return *code;
    }
    if e.chain()
        .any(|c| c.downcast_ref::<Interrupted>().is_some() || left(c))
    {
        return EXIT_INTERRUPTED;
    }
    // A worker's training errors are wrapped transparently, so look inside it too.
    let train_error = |c: &(dyn std::error::Error + 'static)| -> Option<u8> {
        let t = c.downcast_ref::<TrainError>().or_else(|| {
            match c.downcast_ref::<resnet_worker::WorkerError>() {
                Some(resnet_worker::WorkerError::Train(t)) => Some(t),
                _ => None,
            }
        })?;
        match t {
            TrainError::NonFinite { .. } => Some(EXIT_DIVERGED),
            TrainError::CheckpointLost { .. } => Some(EXIT_CHECKPOINT_LOST),
            _ => None,
        }
    };
    e.chain().find_map(train_error).unwrap_or(1)
}

/// Prints an error chain and maps the result to an exit code.
pub fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if json_logs() {
                tracing::error!(exit_code = exit_code(&e), "{e:#}");
            } else {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::from(exit_code(&e))
        }
    }
}

#[cfg(test)]
mod exit_tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_diverged_run_has_its_own_exit_code_wherever_it_is_in_the_chain() {
        let diverged = || resnet_train::TrainError::NonFinite {
            step: 7,
            loss: f64::NAN,
            why: "on_nonfinite = stop".into(),
        };
        let plain: anyhow::Result<()> = Err(diverged().into());
        assert_eq!(
            exit_code(&plain.context("training").expect_err("the run failed")),
            EXIT_DIVERGED
        );
        let worker = anyhow::Error::from(resnet_worker::WorkerError::Train(diverged()));
        assert_eq!(exit_code(&worker.context("worker w0")), EXIT_DIVERGED);
        let other = anyhow::Error::from(resnet_train::TrainError::Config("x".into()));
        assert_eq!(exit_code(&other), 1);
        let stopped = anyhow::Error::from(Interrupted("stopped".into())).context("training");
        assert_eq!(exit_code(&stopped), EXIT_INTERRUPTED);
        let lost = || resnet_train::TrainError::CheckpointLost {
            step: 9,
            error: "No space left on device".into(),
            why: "the final checkpoint could not be written".into(),
            newest: "none".into(),
        };
        let worker = anyhow::Error::from(resnet_worker::WorkerError::Train(lost()));
        assert_eq!(
            exit_code(&worker.context("worker w0")),
            EXIT_CHECKPOINT_LOST
        );
        assert_eq!(
            exit_code(&anyhow::Error::from(lost())),
            EXIT_CHECKPOINT_LOST
        );
        let left = anyhow::Error::from(resnet_worker::WorkerError::Left { step: 12 });
        assert_eq!(exit_code(&left.context("worker w1")), EXIT_INTERRUPTED);
    }

    /// The help text lists each code next to its meaning, as the manifests' checks read it.
    #[test]
    fn the_exit_codes_in_the_help_are_the_constants() {
        let line = |code: u8| {
            EXIT_CODES_HELP
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{code}  ")))
                .unwrap_or_else(|| panic!("no line for exit code {code}"))
        };
        assert!(line(EXIT_DIVERGED).contains("diverged"));
        assert!(line(EXIT_INTERRUPTED).contains("interrupted"));
        assert!(line(EXIT_CHECKPOINT_LOST).contains("checkpoints could not be written"));
        assert!(line(2).contains("usage"));
    }
}
