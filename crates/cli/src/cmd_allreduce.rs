//! `resnet bench-allreduce`: TCP-ring all-reduce throughput on this machine's loopback, as bus
//! bandwidth `2 (n-1)/n * bytes / time` (NCCL's convention), next to a plain TCP copy of the same
//! bytes between two sockets as the ceiling. Every rank is a thread with real sockets.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use resnet_collective::tcp::{TcpRing, TcpRingConfig};
use resnet_collective::Collective;
use serde::Serialize;

/// `resnet bench-allreduce`.
#[derive(Args, Debug)]
pub struct AllReduceArgs {
    /// World sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "2,3,4")]
    pub world: Vec<usize>,
    /// Buffer sizes in MB (ResNet-18 gradients: 44.7 MB).
    #[arg(long, value_delimiter = ',', default_value = "1,10,45")]
    pub mb: Vec<f64>,
    /// Timed repetitions (median reported) after one warm-up.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// JSON lines output.
    #[arg(long)]
    pub json: bool,
    /// Instead: the NCCL world-size-1 check on CUDA device N (cuda builds): an in-place
    /// all-reduce of --elems floats must leave them bit-identical; reports the first call and
    /// the median of --repeats.
    #[arg(long, value_name = "N")]
    pub nccl_gpu: Option<usize>,
    /// Floats in the NCCL check (ResNet-18's 11,181,642 parameters by default).
    #[arg(long, default_value_t = 11_181_642)]
    pub elems: usize,
}

#[derive(Serialize)]
struct Row {
    world: usize,
    mb: f64,
    median_s: f64,
    bus_gb_per_s: f64,
    tcp_copy_gb_per_s: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ring_time(world: usize, elems: usize, repeats: usize) -> Result<f64> {
    let listeners: Vec<TcpListener> = (0..world)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let peers: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<std::io::Result<_>>()?;
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let cfg = TcpRingConfig {
                rank,
                peers: peers.clone(),
                generation: 1,
                timeout: Duration::from_secs(60),
                auth: [0; 32],
                tls: None,
            };
            std::thread::spawn(move || -> Result<Vec<f64>> {
                let mut ring = TcpRing::connect(l, &cfg)?;
                let mut buf = vec![1.0f32; elems];
                let mut times = Vec::new();
                for i in 0..=repeats {
                    let t = Instant::now();
                    ring.all_reduce_sum(&mut buf)?;
                    if i > 0 {
                        times.push(t.elapsed().as_secs_f64());
                    }
                }
                Ok(times)
            })
        })
        .collect();
    let mut slowest = vec![0f64; repeats];
    for h in handles {
        let times = h
            .join()
            .map_err(|_| anyhow::anyhow!("rank thread panicked"))??;
        for (s, t) in slowest.iter_mut().zip(times) {
            *s = s.max(t);
        }
    }
    Ok(median(slowest))
}

fn tcp_copy_time(bytes: usize, repeats: usize) -> Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    // The reader acknowledges each complete message, so a timing covers delivery, not just the
    // copy into the sender's socket buffer.
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..=repeats {
            let mut left = bytes;
            while left > 0 {
                let n = s.read(&mut buf[..left.min(1 << 20)])?;
                if n == 0 {
                    return Ok(());
                }
                left -= n;
            }
            s.write_all(b"k")?;
        }
        Ok(())
    });
    let mut s = TcpStream::connect(addr)?;
    let data = vec![7u8; bytes];
    let mut ack = [0u8; 1];
    let mut times = Vec::new();
    for i in 0..=repeats {
        let t = Instant::now();
        s.write_all(&data)?;
        s.read_exact(&mut ack)?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok(median(times))
}

/// The NCCL world-size-1 check.
#[cfg(feature = "cuda")]
fn nccl_check(gpu: usize, elems: usize, repeats: usize, json: bool) -> Result<()> {
    use resnet_collective::nccl::{unique_id, NcclCollective};
    crate::device::select(&crate::args::DeviceArgs {
        gpu: Some(gpu),
        ..Default::default()
    })?;
    let id = unique_id()?;
    let mut comm = NcclCollective::new(gpu, 0, 1, &id)?;
    let data: Vec<f32> = (0..elems)
        .map(|i| ((i % 9973) as f32 - 4986.0) * 1e-3)
        .collect();
    let mut buf = data.clone();
    let t = Instant::now();
    comm.all_reduce_sum(&mut buf)?;
    let first = t.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        comm.all_reduce_sum(&mut buf)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let exact = buf
        .iter()
        .zip(&data)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    let med = median(times);
    let mut comm = comm.with_device_buffers(true);
    let (dev_exact, dev_first, dev_med) = nccl_device_check(&mut comm, gpu, &data, repeats)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"nccl": true, "gpu": gpu, "world": 1, "elems": elems,
                "bit_exact": exact, "first_call_s": first, "median_s": med,
                "device_bit_exact": dev_exact, "device_first_call_s": dev_first,
                "device_median_s": dev_med})
        );
    } else {
        println!(
            "NCCL world 1 on cuda:{gpu}: {elems} floats, bit-exact {exact}, first call {first:.4} s, median {med:.4} s (host-staged)"
        );
        println!(
            "  device buffers (--nccl-buffers device, a Burn tensor): bit-exact {dev_exact}, first call {dev_first:.4} s, median {dev_med:.4} s"
        );
    }
    anyhow::ensure!(exact, "NCCL all-reduce over one rank changed the data");
    anyhow::ensure!(
        dev_exact,
        "NCCL all-reduce of a device tensor over one rank changed the data"
    );
    Ok(())
}

/// The worker's device-buffer path on a Burn CUDA tensor holding `data`: out of place, so at
/// world size 1 NCCL must copy exactly the tensor's bytes (a wrong address or a missing wait
/// for cubecl's stream shows as a mismatch). Returns (bit-exact, first call s, median s).
#[cfg(feature = "cuda")]
fn nccl_device_check(
    comm: &mut resnet_collective::nccl::NcclCollective,
    gpu: usize,
    data: &[f32],
    repeats: usize,
) -> Result<(bool, f64, f64)> {
    use burn::tensor::{Tensor, TensorData};
    use resnet_kernels::backends::CudaPlain;
    let device = burn::backend::cuda::CudaDevice::new(gpu);
    let input =
        Tensor::<CudaPlain, 1>::from_data(TensorData::new(data.to_vec(), [data.len()]), &device);
    let mut times = Vec::new();
    let mut out = input.clone();
    for _ in 0..=repeats {
        let mut t = input.clone();
        let start = Instant::now();
        resnet_worker::device_reduce::all_reduce_mean(comm, &mut t)
            .context("the device path declined a contiguous f32 CUDA tensor")?
            .map_err(anyhow::Error::msg)?;
        times.push(start.elapsed().as_secs_f64());
        out = t;
    }
    let back: Vec<f32> = out
        .into_data()
        .to_vec()
        .map_err(|e| anyhow::anyhow!("reading the result back: {e:?}"))?;
    let exact = back
        .iter()
        .zip(data)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    let first = times.remove(0);
    Ok((exact, first, median(times)))
}

/// Runs `resnet bench-allreduce`.
pub fn run(a: AllReduceArgs) -> Result<()> {
    anyhow::ensure!(a.repeats > 0, "--repeats must be at least 1");
    if let Some(gpu) = a.nccl_gpu {
        #[cfg(feature = "cuda")]
        return nccl_check(gpu, a.elems, a.repeats, a.json);
        #[cfg(not(feature = "cuda"))]
        anyhow::bail!(
            "--nccl-gpu {gpu}: this binary was built without CUDA support; rebuild with `--features cuda`"
        );
    }
    for &mb in &a.mb {
        let bytes = (mb * 1e6) as usize;
        let elems = bytes / 4;
        let copy = bytes as f64 / tcp_copy_time(bytes, a.repeats).context("loopback copy")? / 1e9;
        for &world in &a.world {
            let t = ring_time(world, elems, a.repeats)
                .with_context(|| format!("world {world}, {mb} MB"))?;
            let bus = 2.0 * (world as f64 - 1.0) / world as f64 * bytes as f64 / t / 1e9;
            let row = Row {
                world,
                mb,
                median_s: t,
                bus_gb_per_s: bus,
                tcp_copy_gb_per_s: copy,
            };
            if a.json {
                println!("{}", serde_json::to_string(&row)?);
            } else {
                println!("world {world} {mb:>5} MB: {:.4} s, bus {:.2} GB/s (plain loopback TCP copy {:.2} GB/s)", t, bus, copy);
            }
        }
    }
    Ok(())
}
