//! `worker --gpus 0,1,2,3|all`: one worker process per GPU of this node, started and watched by
//! this process (torchrun's `--nproc-per-node`), so one pod or one command per node works.
//!
//! Each child is this binary with the same flags, except: `--gpu N` (or `--cpu` kept, for a
//! stand-in on machines without GPUs), `--worker-id <id>-gpuN`, and `--metrics-addr`,
//! `--listen` and `--advertise` ports offset by the child's position (so they do not collide).
//! Human log lines get a `[gpu N]` prefix; JSON lines pass through unchanged (each names its
//! worker). A child that fails is started again (a new worker id: the coordinator re-forms the
//! group, and the new one joins the running job), up to `--max-restarts` times; usage errors
//! (2) and a diverged run (3) are not retried. SIGTERM/SIGINT are passed on to every child
//! (each leaves its group) and the supervisor waits for them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Flags the supervisor sets per child (removed from the inherited command line).
const PER_CHILD: &[&str] = &[
    "--gpus",
    "--gpu",
    "--worker-id",
    "--metrics-addr",
    "--listen",
    "--advertise",
    "--max-restarts",
];

/// The GPU indices of `--gpus`: a comma-separated list, or `all` (every CUDA device).
pub fn parse_gpus(spec: &str, device_count: impl FnOnce() -> Result<usize>) -> Result<Vec<usize>> {
    if spec == "all" {
        let n = device_count()?;
        if n == 0 {
            bail!("--gpus all: no CUDA device found");
        }
        return Ok((0..n).collect());
    }
    let mut gpus = Vec::new();
    for part in spec.split(',') {
        let n: usize = part.trim().parse().with_context(|| {
            format!("--gpus {spec}: '{part}' is not a GPU index (expected e.g. 0,1,2,3 or all)")
        })?;
        if gpus.contains(&n) {
            bail!("--gpus {spec}: GPU {n} is listed twice");
        }
        gpus.push(n);
    }
    Ok(gpus)
}

/// `args` without the per-child flags (both `--flag value` and `--flag=value`).
pub fn inherited_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        let name = a.split('=').next().unwrap_or(a);
        if PER_CHILD.contains(&name) {
            skip_value = !a.contains('=');
            continue;
        }
        out.push(a.clone());
    }
    out
}

/// `addr` with its port moved up by `offset` (a port of 0 stays 0: the OS picks one).
pub fn offset_port(addr: &str, offset: usize) -> Result<String> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("'{addr}' has no port"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("'{addr}': bad port"))?;
    if port == 0 {
        return Ok(addr.to_string());
    }
    let moved = u16::try_from(port as usize + offset)
        .with_context(|| format!("'{addr}' + {offset}: port out of range"))?;
    Ok(format!("{host}:{moved}"))
}

/// What the supervisor needs of the `worker` flags to start its children.
#[derive(Debug, Clone)]
pub struct ChildFlags {
    /// `--cpu`: a stand-in on a machine without GPUs (the children get no `--gpu`).
    pub cpu: bool,
    /// `--metrics-addr`, its port offset per child.
    pub metrics_addr: Option<SocketAddr>,
    /// `--listen`, its port offset per child.
    pub listen: String,
    /// `--advertise`, its port offset per child.
    pub advertise: Option<String>,
    /// The worker id the children's ids derive from (`<id>-gpuN`).
    pub worker_id: String,
}

/// One child's command line (after the binary).
pub fn child_args(
    a: &ChildFlags,
    inherited: &[String],
    base_id: &str,
    gpu: usize,
    position: usize,
    restart: usize,
) -> Result<Vec<String>> {
    let mut v = inherited.to_vec();
    if !a.cpu {
        v.extend(["--gpu".into(), gpu.to_string()]);
    }
    let id = match restart {
        0 => format!("{base_id}-gpu{gpu}"),
        r => format!("{base_id}-gpu{gpu}-r{r}"),
    };
    v.extend(["--worker-id".into(), id]);
    if let Some(m) = a.metrics_addr {
        let m = SocketAddr::new(
            m.ip(),
            u16::try_from(m.port() as usize + position)
                .context("--metrics-addr port + GPU position out of range")?,
        );
        v.extend(["--metrics-addr".into(), m.to_string()]);
    }
    v.extend(["--listen".into(), offset_port(&a.listen, position)?]);
    if let Some(adv) = &a.advertise {
        v.extend(["--advertise".into(), offset_port(adv, position)?]);
    }
    Ok(v)
}

/// Whether a child that exited with `code` is started again.
pub fn retry(code: Option<i32>, stopping: bool) -> bool {
    !stopping && !matches!(code, Some(0) | Some(2) | Some(3))
}

/// The supervisor's exit code for its children's last codes: success only if every child
/// succeeded, else the most telling one (diverged 3, storage 5, usage 2, any other failure 1,
/// interrupted 4); a child killed by a signal or with an unknown code counts as 1.
pub fn combined_code(codes: &[Option<i32>]) -> u8 {
    let severity = |c: Option<i32>| match c {
        Some(0) => 0,
        Some(4) => 1,
        Some(2) => 3,
        Some(5) => 4,
        Some(3) => 5,
        _ => 2,
    };
    let worst = codes
        .iter()
        .copied()
        .max_by_key(|c| severity(*c))
        .unwrap_or(Some(0));
    match worst {
        Some(c @ (0 | 2..=5)) => c as u8,
        _ => 1,
    }
}

struct Slot {
    gpu: usize,
    position: usize,
    restarts: usize,
    child: Option<Child>,
    code: Option<Option<i32>>,
}

/// Runs one worker per GPU of `gpus` until all have ended; returns the combined exit code.
pub fn supervise(a: &ChildFlags, gpus: &[usize], max_restarts: usize) -> Result<u8> {
    let exe = std::env::current_exe().context("finding this program to start the workers")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let inherited = inherited_args(&args);
    let base_id = a.worker_id.clone();
    let stop = crate::stop_on_signals()?;
    let json = crate::json_logs();
    let spawn = |slot: &Slot| -> Result<Child> {
        let child_args = child_args(
            a,
            &inherited,
            &base_id,
            slot.gpu,
            slot.position,
            slot.restarts,
        )?;
        let mut child = Command::new(&exe)
            .args(&child_args)
            // As torchrun sets it: the child's index on this node (its --gpu is explicit).
            .env("LOCAL_RANK", slot.position.to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the worker for GPU {}", slot.gpu))?;
        if let Some(err) = child.stderr.take() {
            let prefix = format!("[gpu {}] ", slot.gpu);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if json {
                        eprintln!("{line}");
                    } else {
                        eprintln!("{prefix}{line}");
                    }
                }
            });
        }
        tracing::info!(
            gpu = slot.gpu,
            pid = child.id(),
            restart = slot.restarts,
            "worker started"
        );
        Ok(child)
    };
    let mut slots: Vec<Slot> = gpus
        .iter()
        .enumerate()
        .map(|(position, &gpu)| Slot {
            gpu,
            position,
            restarts: 0,
            child: None,
            code: None,
        })
        .collect();
    for slot in &mut slots {
        slot.child = Some(spawn(slot)?);
    }
    let mut forwarded = false;
    while slots.iter().any(|s| s.code.is_none()) {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && !forwarded {
            forwarded = true;
            crate::say!("signal received: every worker of this node leaves its group");
            for child in slots.iter().filter_map(|s| s.child.as_ref()) {
                terminate(child);
            }
        }
        for slot in &mut slots {
            let Some(child) = slot.child.as_mut() else {
                continue;
            };
            let Some(status) = child.try_wait().context("waiting for a worker")? else {
                continue;
            };
            let code = status.code();
            slot.child = None;
            if retry(code, stopping) && slot.restarts < max_restarts {
                slot.restarts += 1;
                tracing::warn!(
                    gpu = slot.gpu,
                    ?code,
                    restart = slot.restarts,
                    of = max_restarts,
                    "worker exited: starting it again (it joins the running job)"
                );
                slot.child = Some(spawn(slot)?);
            } else {
                if code != Some(0) {
                    tracing::error!(
                        gpu = slot.gpu,
                        ?code,
                        restarts = slot.restarts,
                        "worker ended with a failure"
                    );
                }
                slot.code = Some(code);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let codes: Vec<Option<i32>> = slots.iter().map(|s| s.code.flatten()).collect();
    Ok(combined_code(&codes))
}

/// Sends SIGTERM to a child (it leaves its group and exits with code 4). Its `Child` is still
/// held (not reaped), so the pid cannot have been reused by another process.
fn terminate(child: &Child) {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        if let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::TERM) {
            tracing::warn!(pid = child.id(), error = %e, "could not pass SIGTERM on to a worker");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> ChildFlags {
        crate::cmd_worker::WorkerCli::parse_from(
            std::iter::once("worker").chain(args.iter().copied()),
        )
        .child_flags()
    }

    #[test]
    fn gpu_lists_and_all() {
        assert_eq!(parse_gpus("0,2, 3", || Ok(0)).expect("list"), [0, 2, 3]);
        assert_eq!(parse_gpus("all", || Ok(4)).expect("all"), [0, 1, 2, 3]);
        assert!(parse_gpus("all", || Ok(0)).is_err());
        let e = parse_gpus("0,x", || Ok(0)).expect_err("bad").to_string();
        assert!(e.contains("'x'"), "{e}");
        assert!(parse_gpus("1,1", || Ok(0)).is_err());
    }

    #[test]
    fn children_get_their_gpu_id_and_offset_ports_and_keep_the_rest() {
        let raw: Vec<String> = [
            "--coordinator",
            "http://c:50051",
            "--gpus=0,1",
            "--worker-id",
            "node",
            "--metrics-addr",
            "0.0.0.0:9187",
            "--listen",
            "0.0.0.0:7070",
            "--advertise=10.0.0.5:7070",
            "--max-restarts",
            "2",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let inherited = inherited_args(&raw);
        assert_eq!(inherited, ["--coordinator", "http://c:50051", "--json"]);
        let a = cli(&[
            "--gpus",
            "0,1",
            "--metrics-addr",
            "0.0.0.0:9187",
            "--listen",
            "0.0.0.0:7070",
            "--advertise",
            "10.0.0.5:7070",
        ]);
        let v = child_args(&a, &inherited, "node", 1, 1, 0).expect("args");
        let joined = v.join(" ");
        assert!(joined.contains("--gpu 1 --worker-id node-gpu1"), "{joined}");
        assert!(joined.contains("--metrics-addr 0.0.0.0:9188"), "{joined}");
        assert!(joined.contains("--listen 0.0.0.0:7071"), "{joined}");
        assert!(joined.contains("--advertise 10.0.0.5:7071"), "{joined}");
        // A restart is a new worker to the coordinator; a CPU stand-in gets no --gpu.
        let a = cli(&["--gpus", "0,1", "--cpu"]);
        let v = child_args(&a, &[], "node", 0, 0, 2)
            .expect("args")
            .join(" ");
        assert!(
            !v.contains("--gpu ") && v.contains("--worker-id node-gpu0-r2"),
            "{v}"
        );
        assert!(v.contains("--listen 127.0.0.1:0"), "{v}");
    }

    #[test]
    fn retries_and_the_combined_exit_code() {
        assert!(retry(Some(1), false) && retry(None, false) && retry(Some(5), false));
        assert!(!retry(Some(0), false) && !retry(Some(2), false) && !retry(Some(3), false));
        assert!(!retry(Some(1), true), "nothing restarts while stopping");
        assert_eq!(combined_code(&[Some(0), Some(0)]), 0);
        assert_eq!(combined_code(&[Some(0), Some(4)]), 4);
        assert_eq!(combined_code(&[Some(1), Some(4)]), 1);
        assert_eq!(combined_code(&[None, Some(0)]), 1, "killed by a signal");
        assert_eq!(combined_code(&[Some(3), Some(5), Some(1)]), 3);
    }
}
