//! Ranks in different processes: a ring of TCP connections.
//!
//! Each rank listens on its data-plane address, connects to the next rank and accepts the
//! previous one. The connecting side opens with a handshake (`handshake.rs`: its rank, the
//! group generation, and a challenge-response proof of the cluster token in both directions);
//! the accepting side admits only its predecessor in this generation, so a stray, stale or
//! token-less peer cannot join the ring. While the ring forms, every incoming connection is
//! handshaken on its own thread with a short timeout, at most a few per source address, so
//! idle or hostile connections cannot hold the port. Frames are `[u32 count][count x f32 LE]`,
//! or, on the bf16 gradient wire, the count with its top bit set and `count x bf16 LE`.
//! A writer thread per rank makes `send` non-blocking; every read has a timeout.
//!
//! (Over 400 lines, with its frame tests: the connection's whole life — formation, handshake,
//! TLS, frames, abort — is one state machine, and each part is only a few dozen lines.)

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ring::RingLink;
use crate::wire::{from_bf16_bits, to_bf16_bits, Wire};
use crate::CollectiveError;

/// Handshakes in flight while the ring forms, in all and per source address: beyond them new
/// connections are closed at once.
const MAX_PENDING: usize = 64;
const MAX_PENDING_PER_ADDRESS: usize = 4;
/// How long one handshake may take (its reads time out after it).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The name every node certificate carries (SAN `DNS:resnet-cluster`): peers are addressed by
/// IP, so the cluster CA vouches for membership rather than for a host name.
pub const TLS_SERVER_NAME: &str = "resnet-cluster";

/// A connection both handshake directions run over (plain TCP or TLS).
trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

type Reader = Box<dyn Duplex>;
type Writer = Box<dyn Duplex>;

/// Mutual TLS for the ring: every connection presents a certificate signed by the cluster CA
/// and verifies its peer's.
#[derive(Clone)]
pub struct RingTls {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for RingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RingTls(mutual, cluster CA)")
    }
}

impl RingTls {
    /// From PEM: this node's certificate chain and private key, and the cluster CA.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, CollectiveError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| setup(format!("TLS {what}: {e}"));
        let certs: Vec<_> = rustls_pemfile::certs(&mut &cert[..])
            .collect::<Result<_, _>>()
            .map_err(|e| bad("certificate", &e))?;
        if certs.is_empty() {
            return Err(setup("TLS certificate: no PEM certificate found"));
        }
        let key = rustls_pemfile::private_key(&mut &key[..])
            .map_err(|e| bad("key", &e))?
            .ok_or_else(|| setup("TLS key: no PEM private key found"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &ca[..]) {
            roots
                .add(c.map_err(|e| bad("CA", &e))?)
                .map_err(|e| bad("CA", &e))?;
        }
        if roots.is_empty() {
            return Err(setup("TLS CA: no PEM certificate found"));
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("config", &e))?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(certs.clone(), key.clone_key())
            .map_err(|e| bad("client identity", &e))?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| bad("client verifier", &e))?;
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("config", &e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| bad("server identity", &e))?;
        Ok(Self {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

fn tls_writer(tls: Option<&RingTls>, s: TcpStream) -> Result<Writer, CollectiveError> {
    match tls {
        None => Ok(Box::new(s)),
        Some(t) => {
            let name = rustls::pki_types::ServerName::try_from(TLS_SERVER_NAME)
                .map_err(|e| setup(e.to_string()))?;
            let conn = rustls::ClientConnection::new(t.client.clone(), name)
                .map_err(|e| setup(format!("TLS: {e}")))?;
            Ok(Box::new(rustls::StreamOwned::new(conn, s)))
        }
    }
}

fn tls_reader(tls: Option<&RingTls>, s: TcpStream) -> Result<Reader, CollectiveError> {
    match tls {
        None => Ok(Box::new(s)),
        Some(t) => {
            let conn = rustls::ServerConnection::new(t.server.clone())
                .map_err(|e| setup(format!("TLS: {e}")))?;
            Ok(Box::new(rustls::StreamOwned::new(conn, s)))
        }
    }
}

/// Breaks a collective from another thread: blocked reads and writes of a TCP ring return at
/// once with an error, and an NCCL wait (which polls [`RingAbort::is_aborted`]) gives up.
/// Used when the coordinator announces a new generation while a collective is waiting on a
/// peer that will never answer.
#[derive(Clone, Default)]
pub struct RingAbort {
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    aborted: Arc<std::sync::atomic::AtomicBool>,
}

impl RingAbort {
    /// Shuts the ring's sockets down and raises the flag (idempotent).
    pub fn abort(&self) {
        self.aborted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Whether [`RingAbort::abort`] was called.
    pub fn is_aborted(&self) -> bool {
        self.aborted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// One rank's TCP ring.
pub struct TcpRing {
    rank: usize,
    world: usize,
    writer: Option<Sender<Vec<u8>>>,
    writer_thread: Option<JoinHandle<()>>,
    writer_error: Arc<Mutex<Option<String>>>,
    reader: Option<Reader>,
    timeout: Duration,
    bytes: Vec<u8>,
    abort: RingAbort,
}

/// Settings for forming the ring.
#[derive(Debug, Clone)]
pub struct TcpRingConfig {
    /// This rank.
    pub rank: usize,
    /// Data-plane address of every rank, indexed by rank.
    pub peers: Vec<String>,
    /// Group generation; peers of another generation are refused.
    pub generation: u64,
    /// Time allowed to form the ring, and per read afterwards.
    pub timeout: Duration,
    /// SHA-256 of the cluster token (all zeros without one); a peer presenting another digest is
    /// refused, so only holders of the token can join the ring.
    pub auth: [u8; 32],
    /// Mutual TLS on every ring connection (None: plain TCP).
    pub tls: Option<RingTls>,
}

fn setup(msg: impl Into<String>) -> CollectiveError {
    CollectiveError::Setup(msg.into())
}

impl TcpRing {
    /// Forms the ring using an already-bound `listener` (bind early so the address can be
    /// announced before the peers are known).
    pub fn connect(listener: TcpListener, cfg: &TcpRingConfig) -> Result<Self, CollectiveError> {
        Self::connect_abortable(listener, cfg, RingAbort::default())
    }

    /// [`connect`](Self::connect) that `abort` can interrupt while the ring forms (the
    /// coordinator re-forms the group because a peer died before connecting: waiting out the
    /// timeout would only delay the regroup). The formed ring keeps `abort` as its handle.
    pub fn connect_abortable(
        listener: TcpListener,
        cfg: &TcpRingConfig,
        abort: RingAbort,
    ) -> Result<Self, CollectiveError> {
        let world = cfg.peers.len();
        let rank = cfg.rank;
        if rank >= world {
            return Err(setup(format!("rank {rank} out of range for {world} peers")));
        }
        let writer_error = Arc::new(Mutex::new(None));
        if world == 1 {
            return Ok(Self {
                rank,
                world,
                writer: None,
                writer_thread: None,
                writer_error,
                reader: None,
                timeout: cfg.timeout,
                bytes: vec![],
                abort,
            });
        }
        let deadline = Instant::now() + cfg.timeout;
        let prev = (rank + world - 1) % world;
        let next = (rank + 1) % world;
        let (generation, auth) = (cfg.generation, cfg.auth);
        let tls = cfg.tls.clone();
        let watch = abort.clone();
        let acceptor = std::thread::spawn(move || {
            let until = Until {
                deadline,
                abort: &watch,
            };
            accept_prev(listener, prev, generation, auth, tls.as_ref(), &until)
        });
        let until = Until {
            deadline,
            abort: &abort,
        };
        let connected = connect_next(
            &cfg.peers[next],
            next,
            rank,
            generation,
            auth,
            cfg.tls.as_ref(),
            &until,
        );
        if connected.is_err() {
            // Stop the acceptor too (it would wait out the deadline): raising the flag is what
            // the coordinator's regroup would do anyway.
            abort.abort();
        }
        let accepted = acceptor
            .join()
            .map_err(|_| setup("accept thread panicked"))?;
        let (out_raw, out) = connected?;
        let (inbound_raw, inbound) = accepted?;
        inbound_raw
            .set_read_timeout(Some(cfg.timeout))
            .map_err(|e| setup(e.to_string()))?;
        let _ = inbound_raw.set_nodelay(true);
        abort
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([inbound_raw, out_raw]);
        let (tx, rx) = channel::<Vec<u8>>();
        let err = writer_error.clone();
        let mut out_stream = out;
        let writer_thread = std::thread::spawn(move || {
            for frame in rx {
                if let Err(e) = out_stream
                    .write_all(&frame)
                    .and_then(|()| out_stream.flush())
                {
                    *err.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    return;
                }
            }
        });
        Ok(Self {
            rank,
            world,
            writer: Some(tx),
            writer_thread: Some(writer_thread),
            writer_error,
            reader: Some(inbound),
            timeout: cfg.timeout,
            bytes: vec![],
            abort,
        })
    }

    /// A handle that breaks this ring from another thread.
    pub fn abort_handle(&self) -> RingAbort {
        self.abort.clone()
    }
}

/// How long ring formation may go on: until the deadline, or until it is aborted.
struct Until<'a> {
    deadline: Instant,
    abort: &'a RingAbort,
}

impl Until<'_> {
    /// Whether to keep trying; an abort is an error naming why.
    fn going(&self) -> Result<bool, CollectiveError> {
        if self.abort.is_aborted() {
            return Err(setup(
                "ring formation aborted: the group is re-forming without a lost peer",
            ));
        }
        Ok(Instant::now() < self.deadline)
    }
}

/// Connects to the next rank and runs the handshake (through TLS when configured), retrying
/// until `deadline`: the peer may not listen yet, or may have turned this connection away while
/// busy. Returns the raw socket (for aborting) and the stream to write on.
fn connect_next(
    addr: &str,
    next: usize,
    rank: usize,
    generation: u64,
    auth: [u8; 32],
    tls: Option<&RingTls>,
    until: &Until,
) -> Result<(TcpStream, Writer), CollectiveError> {
    let mut last_err = String::from("no attempt");
    while until.going()? {
        let target: Option<SocketAddr> = addr.to_socket_addrs().ok().and_then(|mut a| a.next());
        if let Some(target) = target {
            match TcpStream::connect_timeout(&target, Duration::from_millis(500)) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
                    let raw = s.try_clone().map_err(|e| setup(e.to_string()))?;
                    let mut w = tls_writer(tls, s)?;
                    match crate::handshake::connector(&mut w, rank as u32, generation, &auth) {
                        Ok(()) => {
                            let _ = raw.set_read_timeout(None);
                            return Ok((raw, w));
                        }
                        Err(e) => last_err = format!("handshake: {e}"),
                    }
                }
                Err(e) => last_err = e.to_string(),
            }
        } else {
            last_err = format!("cannot resolve '{addr}'");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(setup(format!(
        "cannot connect to rank {next} at {addr}: {last_err}"
    )))
}

/// What a handshake thread hands back: the predecessor's connection, or why it was refused.
type Admitted = Result<(TcpStream, Reader), (SocketAddr, String)>;

fn accept_prev(
    listener: TcpListener,
    prev: usize,
    generation: u64,
    auth: [u8; 32],
    tls: Option<&RingTls>,
    until: &Until,
) -> Result<(TcpStream, Reader), CollectiveError> {
    listener
        .set_nonblocking(true)
        .map_err(|e| setup(e.to_string()))?;
    let (tx, rx) = channel::<Admitted>();
    // Handshakes in flight per source address.
    let pending: Arc<Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> = Arc::default();
    let mut refused = 0usize;
    let mut last_refusal = String::new();
    while until.going()? {
        while let Ok(r) = rx.try_recv() {
            match r {
                Ok(admitted) => return Ok(admitted),
                Err((from, why)) => {
                    refused += 1;
                    tracing::warn!(%from, expected_rank = prev, generation, reason = %why, "refused ring connection");
                    last_refusal = format!("{from}: {why}");
                }
            }
        }
        match listener.accept() {
            Ok((s, from)) => {
                let ip = from.ip();
                let admit = {
                    let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
                    let total: usize = p.values().sum();
                    let here = p.entry(ip).or_default();
                    let ok = total < MAX_PENDING && *here < MAX_PENDING_PER_ADDRESS;
                    if ok {
                        *here += 1;
                    }
                    ok
                };
                if !admit {
                    // Closing at once: a genuine predecessor retries until the deadline.
                    tracing::warn!(%from, "too many ring handshakes in flight: connection closed");
                    continue;
                }
                let (tx, pending, tls) = (tx.clone(), pending.clone(), tls.cloned());
                let spawned = std::thread::Builder::new()
                    .name("ring-handshake".into())
                    .spawn(move || {
                        let r = handshake_prev(s, from, prev, generation, &auth, tls.as_ref());
                        let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(n) = p.get_mut(&ip) {
                            *n -= 1;
                            if *n == 0 {
                                p.remove(&ip);
                            }
                        }
                        drop(p);
                        let _ = tx.send(r);
                    });
                if let Err(e) = spawned {
                    return Err(setup(format!("cannot start a handshake thread: {e}")));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(setup(format!("accept: {e}"))),
        }
    }
    Err(setup(if refused == 0 {
        format!("rank {prev} did not connect in time")
    } else {
        format!(
            "rank {prev} did not connect in time ({refused} other connection(s) refused; last: {last_refusal})"
        )
    }))
}

/// One incoming connection's handshake, with its own timeout.
fn handshake_prev(
    s: TcpStream,
    from: SocketAddr,
    prev: usize,
    generation: u64,
    auth: &[u8; 32],
    tls: Option<&RingTls>,
) -> Admitted {
    let fail = |why: String| (from, why);
    s.set_nonblocking(false)
        .and_then(|()| s.set_read_timeout(Some(HANDSHAKE_TIMEOUT)))
        .and_then(|()| s.set_write_timeout(Some(HANDSHAKE_TIMEOUT)))
        .map_err(|e| fail(e.to_string()))?;
    let raw = s.try_clone().map_err(|e| fail(e.to_string()))?;
    let mut stream = tls_reader(tls, s).map_err(|e| fail(e.to_string()))?;
    crate::handshake::acceptor(&mut stream, prev as u32, generation, auth)
        .map_err(|e| fail(e.to_string()))?;
    let _ = raw.set_write_timeout(None);
    Ok((raw, stream))
}

impl RingLink for TcpRing {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn send(&mut self, data: &[f32]) -> Result<(), CollectiveError> {
        self.send_frame(encode_frame(data, Wire::F32))
    }
    fn send_bf16(&mut self, data: &[f32]) -> Result<(), CollectiveError> {
        self.send_frame(encode_frame(data, Wire::Bf16))
    }
    fn recv(&mut self, out: &mut [f32]) -> Result<(), CollectiveError> {
        self.recv_frame(out, Wire::F32)
    }
    fn recv_bf16(&mut self, out: &mut [f32]) -> Result<(), CollectiveError> {
        self.recv_frame(out, Wire::Bf16)
    }
}

impl TcpRing {
    fn send_frame(&mut self, frame: Vec<u8>) -> Result<(), CollectiveError> {
        let peer = (self.rank + 1) % self.world;
        if let Some(e) = self
            .writer_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(CollectiveError::Disconnected { peer, detail: e });
        }
        let tx = self
            .writer
            .as_ref()
            .ok_or_else(|| CollectiveError::Disconnected {
                peer,
                detail: "ring closed".into(),
            })?;
        tx.send(frame).map_err(|_| CollectiveError::Disconnected {
            peer,
            detail: "writer stopped".into(),
        })
    }
    fn recv_frame(&mut self, out: &mut [f32], wire: Wire) -> Result<(), CollectiveError> {
        let peer = (self.rank + self.world - 1) % self.world;
        let timeout = self.timeout;
        let stream = self
            .reader
            .as_mut()
            .ok_or_else(|| CollectiveError::Disconnected {
                peer,
                detail: "ring closed".into(),
            })?;
        let map = |e: std::io::Error| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                CollectiveError::Timeout { peer, timeout }
            }
            _ => CollectiveError::Disconnected {
                peer,
                detail: e.to_string(),
            },
        };
        read_frame(stream, out, &mut self.bytes, wire).map_err(|e| match e {
            FrameError::Io(e) => map(e),
            FrameError::Length(n) => CollectiveError::Protocol {
                peer,
                detail: format!("frame of {n} elements, expected {}", out.len()),
            },
            FrameError::Wire(got) => CollectiveError::Protocol {
                peer,
                detail: format!(
                    "frame of {} elements, expected {} (the ranks disagree on grad_wire)",
                    got.name(),
                    wire.name()
                ),
            },
        })
    }
}

/// Set in a frame's element count when its elements are bfloat16.
const BF16_FRAME: u32 = 1 << 31;

/// One ring frame on the wire: the element count (u32, little-endian; the top bit set for
/// bfloat16 elements), then the elements (f32 or bfloat16 bits, little-endian).
fn encode_frame(data: &[f32], wire: Wire) -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + data.len() * wire.bytes_per_element());
    match wire {
        Wire::F32 => {
            frame.extend_from_slice(&(data.len() as u32).to_le_bytes());
            for v in data {
                frame.extend_from_slice(&v.to_le_bytes());
            }
        }
        Wire::Bf16 => {
            frame.extend_from_slice(&(data.len() as u32 | BF16_FRAME).to_le_bytes());
            for v in data {
                frame.extend_from_slice(&to_bf16_bits(*v).to_le_bytes());
            }
        }
    }
    frame
}

/// Why a frame could not be read.
#[derive(Debug)]
enum FrameError {
    Io(std::io::Error),
    /// The frame announced this many elements, not the expected number.
    Length(usize),
    /// The frame's elements are of this other type.
    Wire(Wire),
}

/// Reads one frame of exactly `out.len()` elements of `wire`'s type into `out` (through
/// `scratch`). The header is checked before anything is allocated, so a peer cannot make this
/// side allocate more than the reduction it already expects.
fn read_frame(
    stream: &mut impl Read,
    out: &mut [f32],
    scratch: &mut Vec<u8>,
    wire: Wire,
) -> Result<(), FrameError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(FrameError::Io)?;
    let header = u32::from_le_bytes(len);
    let got = if header & BF16_FRAME != 0 {
        Wire::Bf16
    } else {
        Wire::F32
    };
    if got != wire {
        return Err(FrameError::Wire(got));
    }
    let n = (header & !BF16_FRAME) as usize;
    if n != out.len() {
        return Err(FrameError::Length(n));
    }
    scratch.resize(n * wire.bytes_per_element(), 0);
    stream.read_exact(scratch).map_err(FrameError::Io)?;
    match wire {
        Wire::F32 => {
            for (o, b) in out.iter_mut().zip(scratch.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Wire::Bf16 => {
            for (o, b) in out.iter_mut().zip(scratch.chunks_exact(2)) {
                *o = from_bf16_bits(u16::from_le_bytes([b[0], b[1]]));
            }
        }
    }
    Ok(())
}

impl Drop for TcpRing {
    fn drop(&mut self) {
        self.writer.take();
        if let Some(h) = self.writer_thread.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod frame_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever bytes a peer sends, reading a frame returns (never panics, never allocates
        /// beyond the expected frame), and succeeds only when the bytes are a frame of the
        /// expected length and element type, whose elements it returns bit for bit.
        #[test]
        fn any_bytes_are_a_frame_or_an_error(
            expect in 0usize..64,
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            real in any::<bool>(),
            bf16 in any::<bool>(),
            cut in 0usize..300,
        ) {
            let wire = if bf16 { Wire::Bf16 } else { Wire::F32 };
            let es = wire.bytes_per_element();
            // Half the cases: a genuine frame of the expected length, whole or cut short,
            // instead of noise; a third of those in the other element type.
            let bytes = if real {
                let data: Vec<f32> = (0..expect)
                    .map(|i| f32::from_bits(0x9E37_79B9u32.wrapping_mul(i as u32 + 1)))
                    .collect();
                let sent = if cut % 3 == 1 {
                    if bf16 { Wire::F32 } else { Wire::Bf16 }
                } else {
                    wire
                };
                let mut f = encode_frame(&data, sent);
                let keep = if cut % 3 == 0 { f.len() } else { cut.min(f.len()) };
                f.truncate(keep);
                f.extend_from_slice(&bytes[..bytes.len().min(cut % 7)]);
                f
            } else {
                bytes
            };
            let mut out = vec![0f32; expect];
            let mut scratch = Vec::new();
            let r = read_frame(&mut std::io::Cursor::new(&bytes), &mut out, &mut scratch, wire);
            let header = (bytes.len() >= 4)
                .then(|| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
            let type_ok = header.map(|h| (h & BF16_FRAME != 0) == bf16);
            let announced = header.map(|h| (h & !BF16_FRAME) as usize);
            let whole = type_ok == Some(true)
                && announced == Some(expect)
                && bytes.len() >= 4 + es * expect;
            prop_assert_eq!(r.is_ok(), whole, "{:?}", r);
            prop_assert!(scratch.capacity() <= 4 * expect.max(1) + 64);
            if whole {
                for (i, v) in out.iter().enumerate() {
                    let b = &bytes[4 + es * i..4 + es * (i + 1)];
                    let bits = if bf16 {
                        u32::from(u16::from_le_bytes([b[0], b[1]])) << 16
                    } else {
                        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
                    };
                    prop_assert_eq!(v.to_bits(), bits);
                }
            }
            match r {
                Err(FrameError::Length(n)) => {
                    prop_assert_eq!(type_ok, Some(true));
                    prop_assert_eq!(Some(n), announced);
                    prop_assert_ne!(n, expect);
                }
                Err(FrameError::Wire(got)) => {
                    prop_assert_eq!(type_ok, Some(false));
                    prop_assert_ne!(got, wire);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn a_frame_round_trips_bit_exactly() {
        let data = [
            1.5f32,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::MIN_POSITIVE / 2.0,
        ];
        let mut out = [0f32; 5];
        let mut scratch = Vec::new();
        let f = encode_frame(&data, Wire::F32);
        read_frame(&mut f.as_slice(), &mut out, &mut scratch, Wire::F32).expect("frame");
        for (a, b) in data.iter().zip(out) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        let e = read_frame(&mut f.as_slice(), &mut [0f32; 4], &mut scratch, Wire::F32);
        assert!(matches!(e, Err(FrameError::Length(5))), "{e:?}");
        // The same frame where bfloat16 is expected: refused by its type, not misread.
        let e = read_frame(&mut f.as_slice(), &mut out, &mut scratch, Wire::Bf16);
        assert!(matches!(e, Err(FrameError::Wire(Wire::F32))), "{e:?}");
    }

    #[test]
    fn a_bf16_frame_carries_the_rounded_values_in_half_the_bytes() {
        let data = [1.0f32 + 3.0 / 256.0, -0.0, f32::NAN, f32::INFINITY, 1e-3];
        let f = encode_frame(&data, Wire::Bf16);
        assert_eq!(f.len(), 4 + 2 * data.len());
        let (mut out, mut scratch) = ([0f32; 5], Vec::new());
        read_frame(&mut f.as_slice(), &mut out, &mut scratch, Wire::Bf16).expect("frame");
        for (a, b) in data.iter().zip(out) {
            assert_eq!(crate::wire::round_bf16(*a).to_bits(), b.to_bits());
        }
        let e = read_frame(&mut f.as_slice(), &mut out, &mut scratch, Wire::F32);
        assert!(matches!(e, Err(FrameError::Wire(Wire::Bf16))), "{e:?}");
    }
}
