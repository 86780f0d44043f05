//! Where a worker finds its coordinator: `--coordinator` as an operator types it (`host:port`
//! or a URL), or the launch environment's conventions (`RESNET_COORDINATOR`, torchrun's
//! `MASTER_ADDR`/`MASTER_PORT`), made into the URL tonic needs; and which GPU a worker started
//! by a per-process launcher uses (`LOCAL_RANK`).

use anyhow::{bail, Result};

/// The coordinator's gRPC port when only `MASTER_ADDR` is set.
pub const DEFAULT_PORT: u16 = 50051;

/// The coordinator URL from `--coordinator` (clap also fills it from `RESNET_COORDINATOR`), else
/// from `MASTER_ADDR` (+ `MASTER_PORT`, default [`DEFAULT_PORT`]) looked up with `env`. A value
/// without a scheme gets `https://` when `tls` is on, else `http://`.
pub fn coordinator_url(
    given: Option<&str>,
    tls: bool,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String> {
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let (raw, source) = match given.map(str::trim).filter(|s| !s.is_empty()) {
        Some(g) => (g.to_string(), "--coordinator"),
        None => match nonempty(env("MASTER_ADDR")) {
            Some(host) => {
                let port = match nonempty(env("MASTER_PORT")) {
                    Some(p) => p.trim().parse::<u16>().map_err(|_| {
                        anyhow::anyhow!("MASTER_PORT: '{p}' is not a port number (1-65535)")
                    })?,
                    None => DEFAULT_PORT,
                };
                (join_host_port(host.trim(), port), "MASTER_ADDR/MASTER_PORT")
            }
            None => bail!(
                "no coordinator address: give --coordinator HOST:PORT (or a URL), or set \
                 RESNET_COORDINATOR, or MASTER_ADDR (and MASTER_PORT, default {DEFAULT_PORT})"
            ),
        },
    };
    normalise(&raw, tls)
        .map_err(|why| anyhow::anyhow!("invalid coordinator address ({source} '{raw}'): {why}"))
}

/// The GPU a worker runs on: `--gpu` if given; none with `--cpu`; else `LOCAL_RANK` (looked up
/// with `env`), which launchers that start one process per GPU set to the process's index on
/// its node (torchrun, `worker --gpus`, MPI/Slurm wrappers). `RANK` is not read: ranks are the
/// coordinator's to assign.
pub fn worker_gpu(
    gpu: Option<usize>,
    cpu: bool,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<usize>> {
    if gpu.is_some() || cpu {
        return Ok(gpu);
    }
    match env("LOCAL_RANK").filter(|s| !s.trim().is_empty()) {
        None => Ok(None),
        Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
            anyhow::anyhow!(
                "LOCAL_RANK: '{v}' is not a GPU index (expected 0, 1, ...); unset it, or give \
                 --gpu N or --cpu"
            )
        }),
    }
}

/// `host:port` with IPv6 literals bracketed.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `raw` as an http(s) URL with a host and a port.
fn normalise(raw: &str, tls: bool) -> Result<String, String> {
    let (scheme, rest) = match raw.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ((if tls { "https" } else { "http" }).to_string(), raw),
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("unsupported scheme '{scheme}' (use http or https)"));
    }
    let authority = rest.trim_end_matches('/');
    if authority
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("expected HOST:PORT or a URL, found spaces".into());
    }
    if authority.is_empty() || authority.contains('/') {
        return Err("expected HOST:PORT, with nothing after the port".into());
    }
    // The port is what follows the last ':' outside an IPv6 literal's brackets.
    let port = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') && !host.is_empty() => port,
        _ => return Err(format!("no port (e.g. {authority}:{DEFAULT_PORT})")),
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(format!("{scheme}://{authority}")),
        _ => Err(format!("'{port}' is not a port number (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_env::env;

    #[test]
    fn host_port_and_urls_become_urls() {
        let url = |g, tls| coordinator_url(Some(g), tls, env(&[])).expect(g);
        assert_eq!(url("10.0.0.5:50051", false), "http://10.0.0.5:50051");
        assert_eq!(url("10.0.0.5:50051", true), "https://10.0.0.5:50051");
        assert_eq!(url("http://coord:7000/", false), "http://coord:7000");
        assert_eq!(url("HTTPS://coord:7000", false), "https://coord:7000");
        assert_eq!(url("[::1]:50051", false), "http://[::1]:50051");
        // The flag wins over the launcher's variables.
        let u = coordinator_url(Some("a:1"), false, env(&[("MASTER_ADDR", "b")])).expect("flag");
        assert_eq!(u, "http://a:1");
    }

    #[test]
    fn torchrun_variables_are_the_fallback() {
        let u = coordinator_url(None, false, env(&[("MASTER_ADDR", "head-0")])).expect("addr");
        assert_eq!(u, "http://head-0:50051");
        let u = coordinator_url(
            None,
            false,
            env(&[("MASTER_ADDR", "fd00::5"), ("MASTER_PORT", "29500")]),
        )
        .expect("v6");
        assert_eq!(u, "http://[fd00::5]:29500");
    }

    #[test]
    fn bad_addresses_name_the_source_and_what_is_wrong() {
        let err = |g: Option<&str>, e: &'static [(&'static str, &'static str)]| {
            coordinator_url(g, false, env(e))
                .expect_err("bad")
                .to_string()
        };
        assert_eq!(
            err(Some("coord"), &[]),
            "invalid coordinator address (--coordinator 'coord'): no port (e.g. coord:50051)"
        );
        assert_eq!(
            err(Some("grpc://coord:1"), &[]),
            "invalid coordinator address (--coordinator 'grpc://coord:1'): unsupported scheme 'grpc' (use http or https)"
        );
        assert_eq!(
            err(Some("coord:99999"), &[]),
            "invalid coordinator address (--coordinator 'coord:99999'): '99999' is not a port number (1-65535)"
        );
        assert_eq!(
            err(Some("http://coord:1/api"), &[]),
            "invalid coordinator address (--coordinator 'http://coord:1/api'): expected HOST:PORT, with nothing after the port"
        );
        assert_eq!(
            err(None, &[("MASTER_ADDR", "h"), ("MASTER_PORT", "x")]),
            "MASTER_PORT: 'x' is not a port number (1-65535)"
        );
        assert!(err(None, &[]).starts_with("no coordinator address: give --coordinator"));
        assert_eq!(
            err(Some("not a url"), &[]),
            "invalid coordinator address (--coordinator 'not a url'): expected HOST:PORT or a \
             URL, found spaces"
        );
    }

    #[test]
    fn local_rank_picks_the_gpu_unless_the_flags_say_otherwise() {
        let env = |v: &'static str| move |k: &str| (k == "LOCAL_RANK").then(|| v.to_string());
        assert_eq!(
            worker_gpu(None, false, env("3")).expect("a GPU choice"),
            Some(3)
        );
        assert_eq!(
            worker_gpu(None, false, env(" 0 ")).expect("a GPU choice"),
            Some(0)
        );
        assert_eq!(
            worker_gpu(Some(1), false, env("3")).expect("a GPU choice"),
            Some(1)
        );
        assert_eq!(
            worker_gpu(None, true, env("3")).expect("a GPU choice"),
            None
        );
        assert_eq!(
            worker_gpu(None, false, env("")).expect("a GPU choice"),
            None
        );
        assert_eq!(
            worker_gpu(None, false, |_| None).expect("a GPU choice"),
            None
        );
        let e = worker_gpu(None, false, env("gpu1"))
            .expect_err("an error")
            .to_string();
        assert!(e.contains("LOCAL_RANK: 'gpu1' is not a GPU index"), "{e}");
        assert_eq!(
            worker_gpu(Some(2), false, env("gpu1")).expect("a GPU choice"),
            Some(2)
        );
    }
}
