//! The worker's ring: forming it for an assignment (TCP, in-memory or NCCL) and fetching the
//! checkpoint a replica heals from after the group was re-formed. The heartbeat thread, which
//! breaks the ring when the coordinator announces a regroup, is `heartbeat.rs`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use resnet_collective::memory::MemoryRing;
use resnet_collective::tcp::{RingAbort, TcpRing, TcpRingConfig};
use resnet_collective::Collective;
use resnet_proto::{Assignment, ControlPlane};

use crate::{WorkerError, WorkerOptions};

/// Where the ring for an assignment comes from.
pub(crate) enum RingSource<'a> {
    /// This worker's bound data-plane listener (cloned per generation).
    Tcp(&'a TcpListener),
    /// The in-process ring table (one generation only: local runs do not regroup).
    Memory(&'a Arc<Mutex<Vec<Option<MemoryRing>>>>),
}

/// A fresh NCCL unique id to offer the coordinator: CUDA workers of a `nccl` build that talk to
/// their peers over the network; empty otherwise (and when NCCL cannot be loaded, with a warning).
pub(crate) fn fresh_nccl_id(opts: &WorkerOptions, source: &RingSource) -> Vec<u8> {
    if !opts.allow_nccl || !opts.device.starts_with("cuda") || !matches!(source, RingSource::Tcp(_))
    {
        return Vec::new();
    }
    #[cfg(feature = "nccl")]
    match resnet_collective::nccl::unique_id() {
        Ok(id) => return id.to_vec(),
        Err(e) => {
            tracing::warn!(error = %e, "NCCL is not available; this worker all-reduces over the TCP ring")
        }
    }
    Vec::new()
}

#[cfg(feature = "nccl")]
fn nccl_collective(
    a: &Assignment,
    opts: &WorkerOptions,
) -> Result<(Box<dyn Collective>, Option<RingAbort>), WorkerError> {
    let gpu: usize = opts
        .device
        .strip_prefix("cuda:")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            WorkerError::Config(format!(
                "NCCL assigned to a non-CUDA device '{}'",
                opts.device
            ))
        })?;
    let id: [u8; resnet_collective::nccl::ID_BYTES] =
        a.nccl_id.as_slice().try_into().map_err(|_| {
            WorkerError::Config(format!(
                "the coordinator sent an NCCL id of {} bytes, expected {}",
                a.nccl_id.len(),
                resnet_collective::nccl::ID_BYTES
            ))
        })?;
    let comm = resnet_collective::nccl::NcclCollective::new(gpu, a.rank, a.world, &id)?
        .with_timeout(opts.collective_timeout)
        .with_device_buffers(opts.nccl_device_buffers);
    let abort = comm.abort_handle();
    let buffers = if opts.nccl_device_buffers {
        "device"
    } else {
        "host-staged"
    };
    tracing::info!(
        rank = a.rank,
        world = a.world,
        gpu,
        buffers,
        "all-reduce over NCCL"
    );
    Ok((Box::new(comm), Some(abort)))
}

#[cfg(not(feature = "nccl"))]
fn nccl_collective(
    _a: &Assignment,
    _opts: &WorkerOptions,
) -> Result<(Box<dyn Collective>, Option<RingAbort>), WorkerError> {
    Err(WorkerError::Config(
        "the coordinator assigned NCCL, but this worker was built without it".into(),
    ))
}

/// Forms the collective of `a`'s generation: NCCL when the coordinator sent an id (every rank
/// is a CUDA worker with NCCL), else the ring.
/// `abort` interrupts a TCP ring while it forms and stays its handle afterwards.
pub(crate) fn form_ring(
    source: &RingSource,
    a: &Assignment,
    opts: &WorkerOptions,
    abort: RingAbort,
) -> Result<(Box<dyn Collective>, Option<RingAbort>), WorkerError> {
    if !a.nccl_id.is_empty() {
        return nccl_collective(a, opts);
    }
    match source {
        RingSource::Tcp(l) => {
            let l = l
                .try_clone()
                .map_err(|e| WorkerError::Storage(format!("data-plane listener: {e}")))?;
            let ring = TcpRing::connect_abortable(
                l,
                &TcpRingConfig {
                    rank: a.rank,
                    peers: a.peers.clone(),
                    generation: a.generation,
                    timeout: opts.collective_timeout,
                    auth: opts.ring_auth,
                    tls: opts.ring_tls.clone(),
                },
                abort,
            )?;
            let abort = ring.abort_handle();
            Ok((Box::new(ring), Some(abort)))
        }
        RingSource::Memory(table) => {
            let ring = table
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(a.rank)
                .and_then(Option::take);
            let ring = ring.ok_or_else(|| {
                WorkerError::Config(format!("no in-process ring end for rank {}", a.rank))
            })?;
            Ok((Box::new(ring), None))
        }
    }
}

/// Downloads a checkpoint from the coordinator (`step` 0: the run's resume checkpoint) into
/// `scratch/<name>` and verifies it on disk.
pub(crate) fn fetch_checkpoint(
    control: &mut dyn ControlPlane,
    opts: &WorkerOptions,
    generation: u64,
    step: u64,
    scratch: &Path,
) -> Result<PathBuf, WorkerError> {
    let files = control.download_checkpoint(&opts.worker_id, generation, step)?;
    let dir = scratch.join(format!("fetched-g{generation}")).join(
        resnet_train::checkpoint::checkpoint_name(files.step as usize),
    );
    std::fs::create_dir_all(&dir)
        .map_err(|e| WorkerError::Storage(format!("{}: {e}", dir.display())))?;
    for (name, data) in &files.files {
        // Names were checked by the chunk assembler (plain file names only).
        std::fs::write(dir.join(name), data)
            .map_err(|e| WorkerError::Storage(format!("{}: {e}", dir.join(name).display())))?;
    }
    resnet_train::verify(&dir)?;
    tracing::info!(
        step = files.step,
        bytes = files.bytes(),
        "downloaded checkpoint"
    );
    Ok(dir)
}
