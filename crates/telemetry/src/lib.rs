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
/// `resnet_cluster_process_resident_memory_bytes{component}`: resident set size of the process.
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "resnet_cluster_process_resident_memory_bytes";
/// `resnet_cluster_process_start_time_seconds{component}`: Unix time the process started.
pub const PROCESS_START_TIME_SECONDS: &str = "resnet_cluster_process_start_time_seconds";

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
    metrics::gauge!(PROCESS_START_TIME_SECONDS, "component" => component).set(unix_now());
    let memory = metrics::gauge!(PROCESS_RESIDENT_MEMORY_BYTES, "component" => component);
    // A sampler thread rather than a scrape hook: the facade has no collect-time callbacks.
    std::thread::Builder::new()
        .name("metrics-process".into())
        .spawn(move || loop {
            if let Some(rss) = resident_memory_bytes() {
                memory.set(rss as f64);
            }
            std::thread::sleep(Duration::from_secs(2));
        })
        .map_err(|e| err(e.to_string()))?;
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(())
}

fn describe() {
    metrics::describe_gauge!(BUILD_INFO, "Build of the running binary (always 1).");
    metrics::describe_gauge!(
        PROCESS_RESIDENT_MEMORY_BYTES,
        metrics::Unit::Bytes,
        "Resident memory of the process."
    );
    metrics::describe_gauge!(
        PROCESS_START_TIME_SECONDS,
        metrics::Unit::Seconds,
        "Unix time the process started."
    );
}

/// Resident set size from `/proc/self/statm` (Linux); `None` elsewhere.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // 4 KiB pages: the page size of every x86_64 and default aarch64 Linux we target.
    Some(pages * 4096)
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
    fn reads_this_process_memory() {
        let rss = resident_memory_bytes().expect("Linux /proc");
        assert!(rss > 1 << 20, "rss {rss}");
    }

    #[test]
    fn busy_port_is_an_error_naming_the_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let e = serve_metrics(addr, "test").expect_err("port is taken");
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
