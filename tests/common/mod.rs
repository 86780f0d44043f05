//! Helpers shared by the process-level integration tests (each test file is its own crate and
//! uses a subset, hence the dead-code allowance).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The data and model of the multi-process runs: synthetic data, width 4, batch 16, 960 train
/// and 64 test images — small enough for two cores, long enough to kill something mid-run.
pub const SMALL_RUN: &[&str] = &[
    "--dataset",
    "synthetic",
    "--width",
    "4",
    "--batch-size",
    "16",
    "--train-limit",
    "960",
    "--test-limit",
    "64",
];

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive ports that were all free a moment ago (`worker --gpus` serves
/// child i's metrics on the given port + i).
///
/// The ports come from below Linux's ephemeral range (32768-60999): a port the kernel hands
/// out for `bind(0)` is also a candidate source port of every outgoing connection, so between
/// this check and the server's bind a client (another worker, another test) could take it.
/// A per-process counter keeps the tests of one binary apart; the process id spreads binaries.
pub fn free_ports(n: u16) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let spread = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..1_000 {
        let offset = NEXT.fetch_add(u32::from(n), Ordering::Relaxed);
        let first = LOW + (spread + offset) % (SPAN - u32::from(n));
        let first = u16::try_from(first).expect("below 32768");
        let free = (first..first + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return first;
        }
    }
    panic!("no {n} consecutive free ports in {LOW}..{}", LOW + SPAN);
}

/// Starts `bin` with piped stdout and stderr.
pub fn spawn(bin: &str, args: &[&str]) -> Child {
    Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e}"))
}

/// Runs `resnet` with `args`: (success, stdout, stderr).
pub fn resnet(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(args)
        .output()
        .expect("run resnet");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `resnet` with `args`, asserts success (showing stderr otherwise), returns stdout.
pub fn resnet_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = resnet(args);
    assert!(ok, "resnet {args:?} failed:\n{stderr}");
    stdout
}

/// Waits for `child`, asserts success (showing its stderr otherwise), returns its stdout.
pub fn finish(child: Child, what: &str) -> String {
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `GET /metrics` with a plain socket (HTTP/1.0: the server closes when done).
pub fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// The value of the sample named `name` whose labels contain every one of `parts`.
pub fn value(text: &str, name: &str, parts: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
