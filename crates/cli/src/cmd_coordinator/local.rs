//! `coordinator --local`: the group's workers as threads of this process, on an in-memory ring.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use resnet_collective::memory::MemoryRing;
use resnet_kernels::KernelChoice;
use resnet_proto::GrpcControlPlane;
use resnet_worker::{run_worker, Transport, WorkerOptions, WorkerResult};

use crate::device::Selected;

pub(super) fn run_local_workers(
    sel: Selected,
    kernels: KernelChoice,
    n: usize,
    url: &str,
    token: Option<&str>,
    ring_auth: [u8; 32],
    tls: Option<resnet_proto::TlsMaterial>,
) -> Result<Vec<WorkerResult>> {
    let table = Arc::new(Mutex::new(
        MemoryRing::group(n, Duration::from_secs(300))
            .into_iter()
            .map(Some)
            .collect::<Vec<_>>(),
    ));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (table, url, token) = (table.clone(), url.to_string(), token.map(str::to_string));
            let tls = tls.clone();
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || -> Result<WorkerResult> {
                    let connect = || {
                        GrpcControlPlane::connect_with(
                            &url,
                            Duration::from_secs(10),
                            token.as_deref(),
                            tls.as_ref(),
                        )
                    };
                    let (mut control, beats, uploads) = (connect()?, connect()?, connect()?);
                    let opts = WorkerOptions {
                        worker_id: format!("local-{i}"),
                        data_dir: None,
                        device: sel.name(),
                        collective_timeout: Duration::from_secs(300),
                        heartbeat_every: resnet_proto::HEARTBEAT_INTERVAL,
                        ring_auth,
                        out: None,
                        rejoin_timeout: Duration::from_secs(60),
                        ring_tls: None, // the in-memory ring never leaves the process
                        allow_nccl: false,
                        nccl_device_buffers: false,
                        // Threads of one process compile the same kernels at the same time.
                        warm_up: false,
                        kernels,
                        leave_signal: None,
                    };
                    let r = crate::with_train_backend!(sel, |B, device| run_worker::<B>(
                        &mut control,
                        Some(Box::new(beats)),
                        Some(Box::new(uploads)),
                        Transport::Memory(table),
                        &opts,
                        device
                    )?);
                    Ok(r)
                })
                .map_err(anyhow::Error::from)
        })
        .collect::<Result<_>>()?;
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a worker thread panicked"))?
        })
        .collect()
}
