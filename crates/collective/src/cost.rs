//! What a gradient all-reduce costs and how much of it overlapping with the backward pass can
//! hide: the arithmetic behind `resnet scaling` (#21). Pure functions of sizes, rates and times —
//! no clocks, no I/O — so every case can be checked by hand.
//!
//! Costs follow the usual alpha–beta model of a bandwidth-optimal ring: each rank sends and
//! receives `2 (n-1)/n` of the buffer in `2 (n-1)` messages, so
//! `time = 2 (n-1)/n · bytes / bandwidth + 2 (n-1) · latency`. Across nodes the model is the
//! hierarchical all-reduce NCCL and Horovod use: reduce-scatter inside each node, an all-reduce
//! of each GPU's `1/g` shard between the nodes (the node's NICs shared by its GPUs), all-gather
//! inside the node.

/// One kind of link: the payload bandwidth a ring sees and the latency of one message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// Payload bytes per second (after protocol overhead: scale a wire rate by its efficiency).
    pub bytes_per_s: f64,
    /// Seconds per message (one ring step).
    pub latency_s: f64,
}

/// Where the GPUs sit: nodes of `per_node` GPUs joined by `nics` network links each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Topology {
    /// GPUs per node (1 for one worker per machine, as on the test bed).
    pub per_node: usize,
    /// The link between GPUs of one node (NVLink, PCIe).
    pub intra: Link,
    /// One network interface between nodes.
    pub inter: Link,
    /// Network interfaces per node; each GPU drives at most one.
    pub nics: usize,
}

/// Seconds a ring all-reduce of `bytes` over `n` ranks takes on `link`.
pub fn ring_allreduce_s(bytes: f64, n: usize, link: Link) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let steps = 2.0 * (n - 1) as f64;
    steps / n as f64 * bytes / link.bytes_per_s + steps * link.latency_s
}

/// Seconds an all-reduce of `bytes` over `gpus` GPUs takes on `topo`: one ring inside a node,
/// the hierarchical all-reduce across nodes (a partly filled last node counts as a full one).
pub fn allreduce_s(bytes: f64, gpus: usize, topo: &Topology) -> f64 {
    if gpus <= 1 {
        return 0.0;
    }
    let g = topo.per_node.clamp(1, gpus);
    let nodes = gpus.div_ceil(g);
    if nodes == 1 {
        return ring_allreduce_s(bytes, gpus, topo.intra);
    }
    // Reduce-scatter and all-gather inside the node: half a ring each.
    let intra = ring_allreduce_s(bytes, g, topo.intra);
    // Every GPU all-reduces its 1/g shard with its peers on the other nodes at the same time, so
    // the node's NICs together carry the whole buffer's ring traffic.
    let nics = topo.nics.clamp(1, g) as f64;
    let node_link = Link {
        bytes_per_s: topo.inter.bytes_per_s * nics,
        latency_s: topo.inter.latency_s,
    };
    intra + ring_allreduce_s(bytes, nodes, node_link)
}

/// A parameter's gradient as the backward pass produces it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grad {
    /// Bytes on the wire.
    pub bytes: f64,
    /// Seconds after the backward pass starts at which it is complete.
    pub ready_s: f64,
}

/// Gradients grouped for one all-reduce call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Bytes in the bucket.
    pub bytes: f64,
    /// When its last gradient is complete (seconds after the backward starts).
    pub ready_s: f64,
}

/// Groups `grads` (in the order the backward finishes them) into buckets the way PyTorch DDP
/// does: a bucket is closed as soon as it holds at least `cap_bytes`; a gradient larger than the
/// cap fills one bucket alone; the remainder is the last bucket.
pub fn buckets(grads: &[Grad], cap_bytes: f64) -> Vec<Bucket> {
    let mut out = vec![];
    let mut open: Option<Bucket> = None;
    for g in grads {
        let b = open.get_or_insert(Bucket {
            bytes: 0.0,
            ready_s: 0.0,
        });
        b.bytes += g.bytes;
        b.ready_s = b.ready_s.max(g.ready_s);
        if b.bytes >= cap_bytes {
            out.extend(open.take());
        }
    }
    out.extend(open);
    out
}

/// How the buckets' all-reduces fall against the backward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overlap {
    /// Sum of the buckets' all-reduce times (more than one flat all-reduce: one latency term
    /// per bucket).
    pub comm_s: f64,
    /// When the last bucket's all-reduce ends, seconds after the backward starts.
    pub end_s: f64,
    /// Communication the optimizer waits for after the backward: `max(0, end - backward)`.
    pub exposed_s: f64,
}

/// Runs the buckets' all-reduces one after another on one channel (one NCCL stream, or the
/// ring's one thread), each starting when its bucket is ready and the previous one is done.
pub fn schedule(buckets: &[Bucket], backward_s: f64, cost: impl Fn(f64) -> f64) -> Overlap {
    let (mut comm, mut end) = (0.0, 0.0f64);
    for b in buckets {
        let c = cost(b.bytes);
        comm += c;
        end = end.max(b.ready_s) + c;
    }
    Overlap {
        comm_s: comm,
        end_s: end,
        exposed_s: (end - backward_s).max(0.0),
    }
}

/// One replica's compute per step, seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compute {
    /// Forward pass (and loss).
    pub forward_s: f64,
    /// Backward pass.
    pub backward_s: f64,
    /// Optimizer step (and anything else after the all-reduce).
    pub optimizer_s: f64,
}

impl Compute {
    /// The step of one GPU alone: nothing to all-reduce.
    pub fn step_s(&self) -> f64 {
        self.forward_s + self.backward_s + self.optimizer_s
    }
}

/// The predicted step at one cluster size (weak scaling: the per-GPU batch is fixed).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// GPUs (ranks).
    pub gpus: usize,
    /// Nodes they sit on.
    pub nodes: usize,
    /// One flat all-reduce of every gradient, seconds.
    pub allreduce_s: f64,
    /// Step without overlap: forward + backward + flat all-reduce + optimizer.
    pub step_s: f64,
    /// Single-GPU step / `step_s`.
    pub efficiency: f64,
    /// Buckets of the overlapped step.
    pub buckets: usize,
    /// The buckets' all-reduce seconds in all.
    pub bucket_comm_s: f64,
    /// What the optimizer still waits for after the backward with overlap.
    pub exposed_s: f64,
    /// Step with overlap: forward + backward + exposed + optimizer.
    pub overlap_step_s: f64,
    /// Single-GPU step / `overlap_step_s`.
    pub overlap_efficiency: f64,
}

/// Predicts the step at `gpus` GPUs with and without bucketed overlap. `grads` are in backward
/// order with ready times inside `compute.backward_s`.
pub fn predict(
    gpus: usize,
    topo: &Topology,
    compute: &Compute,
    grads: &[Grad],
    bucket_cap_bytes: f64,
) -> Prediction {
    let total: f64 = grads.iter().map(|g| g.bytes).sum();
    let cost = |bytes| allreduce_s(bytes, gpus, topo);
    let flat = cost(total);
    let step = compute.step_s() + flat;
    let bs = buckets(grads, bucket_cap_bytes);
    let ov = schedule(&bs, compute.backward_s, cost);
    let overlap_step = compute.step_s() + ov.exposed_s;
    Prediction {
        gpus,
        nodes: gpus.div_ceil(topo.per_node.clamp(1, gpus.max(1))),
        allreduce_s: flat,
        step_s: step,
        efficiency: compute.step_s() / step,
        buckets: bs.len(),
        bucket_comm_s: ov.comm_s,
        exposed_s: ov.exposed_s,
        overlap_step_s: overlap_step,
        overlap_efficiency: compute.step_s() / overlap_step,
    }
}

/// Parses a `tc` rate such as `1gbit`, `200mbit`, `10gbit`, `500kbit` or `100bit` (bits per
/// second, decimal prefixes as `tc` uses them) into bits per second.
pub fn parse_rate(s: &str) -> Option<f64> {
    let s = s.trim().to_ascii_lowercase();
    let digits = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(digits);
    let scale = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        _ => return None,
    };
    let v: f64 = num.parse().ok()?;
    (v > 0.0 && v.is_finite()).then_some(v * scale)
}

#[cfg(test)]
mod tests;
