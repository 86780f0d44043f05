//! Prometheus metrics for the binaries: installs the exporter, fixes histogram buckets, and
//! publishes the process-level series every component shares.
//!
//! The domain crates (worker, coordinator) only use the `metrics` facade and define their own
//! metric names; without an installed recorder their calls are no-ops, so tests and library
//! users pay nothing.

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Every metric this project exports starts with this.
pub const PREFIX: &str = "resnet_cluster_";

/// `resnet_cluster_build_info{component,version}`: always 1; joins other series to a version.
pub const BUILD_INFO: &str = "resnet_cluster_build_info";
/// The standard process series (the names every Prometheus client library's process collector
/// uses, so stock dashboards and alerts work on them); job and instance tell the processes apart.
/// `process_resident_memory_bytes`: resident set size.
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
/// `process_virtual_memory_bytes`: virtual memory size.
pub const PROCESS_VIRTUAL_MEMORY_BYTES: &str = "process_virtual_memory_bytes";
/// `process_start_time_seconds`: Unix time the process started.
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";
/// `process_cpu_seconds_total`: user + system CPU time (exported as a gauge: the facade's
/// counters take integers, and `rate()` reads either).
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
/// `process_open_fds`: open file descriptors.
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// `process_max_fds`: the file-descriptor limit.
pub const PROCESS_MAX_FDS: &str = "process_max_fds";

/// Bucket bounds (seconds) for every `*_seconds` histogram: 1 ms to ~2 min, doubling, which
/// covers a CPU step of a tiny model and a GPU step of ResNet-152 alike.
pub fn duration_buckets() -> Vec<f64> {
    (0..18).map(|i| 0.001 * 2f64.powi(i)).collect()
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The HTTP listener or the recorder could not be installed.
    #[error("cannot serve metrics on {addr}: {message}")]
    Install {
        /// Requested address.
        addr: SocketAddr,
        /// What the exporter said.
        message: String,
    },
}

/// Serves `GET /metrics` on `addr` (read-only: the exporter answers nothing else) and records
/// every metric of this process from now on. `component` labels the process-level series
/// ("coordinator", "worker", "resnet"). Call once per process.
pub fn serve_metrics(addr: SocketAddr, component: &'static str) -> Result<(), TelemetryError> {
    let err = |message: String| TelemetryError::Install { addr, message };
    // Bind first so a busy port is reported here, not later on the exporter's thread.
    drop(std::net::TcpListener::bind(addr).map_err(|e| err(e.to_string()))?);
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &duration_buckets())
        .map_err(|e| err(e.to_string()))?
        .install()
        .map_err(|e| err(e.to_string()))?;
    describe();
    metrics::gauge!(BUILD_INFO, "component" => component, "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    metrics::gauge!(PROCESS_START_TIME_SECONDS).set(unix_now());
    // A sampler thread rather than a scrape hook: the facade has no collect-time callbacks.
    std::thread::Builder::new()
        .name("metrics-process".into())
        .spawn(move || loop {
            let p = ProcessStats::read();
            let set = |name: &'static str, v: Option<f64>| {
                if let Some(v) = v {
                    metrics::gauge!(name).set(v);
                }
            };
            set(PROCESS_RESIDENT_MEMORY_BYTES, p.resident_bytes);
            set(PROCESS_VIRTUAL_MEMORY_BYTES, p.virtual_bytes);
            set(PROCESS_CPU_SECONDS_TOTAL, p.cpu_seconds);
            set(PROCESS_OPEN_FDS, p.open_fds);
            set(PROCESS_MAX_FDS, p.max_fds);
            std::thread::sleep(Duration::from_secs(2));
        })
        .map_err(|e| err(e.to_string()))?;
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(())
}

fn describe() {
    metrics::describe_gauge!(BUILD_INFO, "Build of the running binary (always 1).");
    for (name, unit, help) in [
        (
            PROCESS_RESIDENT_MEMORY_BYTES,
            metrics::Unit::Bytes,
            "Resident memory size in bytes.",
        ),
        (
            PROCESS_VIRTUAL_MEMORY_BYTES,
            metrics::Unit::Bytes,
            "Virtual memory size in bytes.",
        ),
        (
            PROCESS_START_TIME_SECONDS,
            metrics::Unit::Seconds,
            "Start time of the process since unix epoch in seconds.",
        ),
        (
            PROCESS_CPU_SECONDS_TOTAL,
            metrics::Unit::Seconds,
            "Total user and system CPU time spent in seconds.",
        ),
        (
            PROCESS_OPEN_FDS,
            metrics::Unit::Count,
            "Number of open file descriptors.",
        ),
        (
            PROCESS_MAX_FDS,
            metrics::Unit::Count,
            "Maximum number of open file descriptors.",
        ),
    ] {
        metrics::describe_gauge!(name, unit, help);
    }
}

/// What Linux's /proc says about this process (None where it cannot be read: other systems).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    /// Resident set size.
    pub resident_bytes: Option<f64>,
    /// Virtual memory size.
    pub virtual_bytes: Option<f64>,
    /// User + system CPU seconds.
    pub cpu_seconds: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<f64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<f64>,
}

impl ProcessStats {
    /// Reads /proc/self.
    pub fn read() -> Self {
        // 4 KiB pages and 100 clock ticks per second: every x86_64 and default aarch64 Linux
        // this targets (the values `getconf PAGESIZE` and `getconf CLK_TCK` report there).
        const PAGE: f64 = 4096.0;
        const TICKS: f64 = 100.0;
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let mut pages = statm.split_whitespace().map(|v| v.parse::<f64>().ok());
        let virtual_bytes = pages.next().flatten().map(|p| p * PAGE);
        let resident_bytes = pages.next().flatten().map(|p| p * PAGE);
        // /proc/self/stat: fields after the parenthesised command; utime and stime are the
        // 12th and 13th of them (14th and 15th of the line).
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let cpu_seconds = stat.rsplit_once(')').and_then(|(_, rest)| {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / TICKS)
        });
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64);
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3))
                    .and_then(|v| v.parse().ok())
            });
        Self {
            resident_bytes,
            virtual_bytes,
            cpu_seconds,
            open_fds,
            max_fds,
        }
    }
}

/// Resident set size from `/proc/self/statm` (Linux); `None` elsewhere.
pub fn resident_memory_bytes() -> Option<u64> {
    ProcessStats::read().resident_bytes.map(|b| b as u64)
}

/// Current Unix time in seconds (for `*_timestamp_seconds` gauges).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_increase_and_span_a_millisecond_to_minutes() {
        let b = duration_buckets();
        assert!(b.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(b[0], 0.001);
        assert!(*b.last().unwrap_or(&0.0) > 60.0);
    }

    #[test]
    fn reads_this_process_memory_cpu_and_descriptors() {
        let rss = resident_memory_bytes().expect("Linux /proc");
        assert!(rss > 1 << 20, "rss {rss}");
        // Burn some CPU so the counter is above zero at 10 ms resolution.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let p = ProcessStats::read();
        assert!(p.virtual_bytes.expect("vm") >= rss as f64);
        assert!(p.cpu_seconds.expect("cpu") > 0.0);
        let (open, max) = (p.open_fds.expect("fds"), p.max_fds.expect("limit"));
        assert!(open >= 3.0 && max >= open, "{open} of {max}");
    }

    #[test]
    fn busy_port_is_an_error_naming_the_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let e = serve_metrics(addr, "test").expect_err("port is taken");
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
