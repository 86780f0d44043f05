//! The ring's connection handshake: who is connecting (rank, generation) and proof, both ways,
//! that each side holds the cluster token — without the token or its digest ever crossing the
//! wire, so a captured handshake cannot be replayed.
//!
//! ```text
//! connector -> acceptor   "RCR2" | rank u32 LE | generation u64 LE | connector nonce [16]
//! acceptor  -> connector  acceptor nonce [16] | HMAC(key, "acceptor"  | rank | gen | nonces)
//! connector -> acceptor                         HMAC(key, "connector" | rank | gen | nonces)
//! ```
//!
//! `key` is the SHA-256 of the cluster token (all zeros without one). Both nonces are fresh
//! per connection, so each proof is good for one connection only; the role labels stop a proof
//! from being reflected back. Proofs are compared in constant time (`hmac`'s `verify_slice`).

use std::io::{Read, Write};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Protocol magic and version.
pub(crate) const MAGIC: &[u8; 4] = b"RCR2";
const HELLO: usize = 32;
const NONCE: usize = 16;
const PROOF: usize = 32;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The connection failed or timed out mid-handshake.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a ring peer of this version (another service, or an old build).
    #[error("not a ring handshake (magic {0:02x?}; another service or build on this port?)")]
    Magic([u8; 4]),
    /// A peer of another rank than the one expected.
    #[error("claims rank {claimed}, expected rank {expected}")]
    Rank {
        /// What the peer said.
        claimed: u32,
        /// Whom this side waits for.
        expected: u32,
    },
    /// A peer of another group generation (a stale member).
    #[error("is of generation {got}, this group is generation {expected}")]
    Generation {
        /// What the peer said.
        got: u64,
        /// This group's generation.
        expected: u64,
    },
    /// The peer's proof did not match: it does not hold the cluster token.
    #[error("did not prove the cluster token (a different --token-file, or none)")]
    Proof,
}

fn proof(
    key: &[u8; 32],
    role: &[u8],
    rank: u32,
    generation: u64,
    ours: &[u8; NONCE],
    theirs: &[u8; NONCE],
) -> Hmac<Sha256> {
    // new_from_slice accepts any key length for HMAC, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(role);
    m.update(&rank.to_le_bytes());
    m.update(&generation.to_le_bytes());
    m.update(ours);
    m.update(theirs);
    m
}

fn nonce() -> [u8; NONCE] {
    // ThreadRng: a CSPRNG seeded from the operating system.
    rand::random()
}

/// The connecting side: announces `rank` in `generation`, checks the acceptor's proof, proves
/// itself.
pub(crate) fn connector<S: Read + Write>(
    s: &mut S,
    rank: u32,
    generation: u64,
    key: &[u8; 32],
) -> Result<(), HandshakeError> {
    let ours = nonce();
    let mut hello = [0u8; HELLO];
    hello[..4].copy_from_slice(MAGIC);
    hello[4..8].copy_from_slice(&rank.to_le_bytes());
    hello[8..16].copy_from_slice(&generation.to_le_bytes());
    hello[16..].copy_from_slice(&ours);
    s.write_all(&hello)?;
    s.flush()?;
    let mut reply = [0u8; NONCE + PROOF];
    s.read_exact(&mut reply)?;
    let mut theirs = [0u8; NONCE];
    theirs.copy_from_slice(&reply[..NONCE]);
    proof(key, b"acceptor", rank, generation, &ours, &theirs)
        .verify_slice(&reply[NONCE..])
        .map_err(|_| HandshakeError::Proof)?;
    let mine = proof(key, b"connector", rank, generation, &ours, &theirs).finalize();
    s.write_all(&mine.into_bytes())?;
    s.flush()?;
    Ok(())
}

/// The accepting side: admits `expect_rank` of `generation` holding the token, nobody else.
pub(crate) fn acceptor<S: Read + Write>(
    s: &mut S,
    expect_rank: u32,
    generation: u64,
    key: &[u8; 32],
) -> Result<(), HandshakeError> {
    let mut hello = [0u8; HELLO];
    s.read_exact(&mut hello)?;
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&hello[..4]);
    if &magic != MAGIC {
        return Err(HandshakeError::Magic(magic));
    }
    let rank = u32::from_le_bytes([hello[4], hello[5], hello[6], hello[7]]);
    let mut g = [0u8; 8];
    g.copy_from_slice(&hello[8..16]);
    let got = u64::from_le_bytes(g);
    if got != generation {
        return Err(HandshakeError::Generation {
            got,
            expected: generation,
        });
    }
    if rank != expect_rank {
        return Err(HandshakeError::Rank {
            claimed: rank,
            expected: expect_rank,
        });
    }
    let mut theirs = [0u8; NONCE];
    theirs.copy_from_slice(&hello[16..]);
    let ours = nonce();
    let mine = proof(key, b"acceptor", rank, generation, &theirs, &ours).finalize();
    let mut reply = [0u8; NONCE + PROOF];
    reply[..NONCE].copy_from_slice(&ours);
    reply[NONCE..].copy_from_slice(&mine.into_bytes());
    s.write_all(&reply)?;
    s.flush()?;
    let mut answer = [0u8; PROOF];
    s.read_exact(&mut answer)?;
    proof(key, b"connector", rank, generation, &theirs, &ours)
        .verify_slice(&answer)
        .map_err(|_| HandshakeError::Proof)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// Runs both sides over loopback: (connector's result, acceptor's result).
    fn run(
        c: (u32, u64, [u8; 32]),
        a: (u32, u64, [u8; 32]),
    ) -> (Result<(), HandshakeError>, Result<(), HandshakeError>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let acc = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            acceptor(&mut s, a.0, a.1, &a.2)
        });
        let mut s = TcpStream::connect(addr).expect("connect");
        let r = connector(&mut s, c.0, c.1, &c.2);
        drop(s);
        (r, acc.join().expect("thread"))
    }

    #[test]
    fn peers_with_the_same_token_admit_each_other() {
        let (c, a) = run((3, 7, [9; 32]), (3, 7, [9; 32]));
        assert!(c.is_ok() && a.is_ok(), "{c:?} {a:?}");
    }

    #[test]
    fn another_token_rank_or_generation_is_refused_by_name() {
        let (c, a) = run((3, 7, [1; 32]), (3, 7, [9; 32]));
        assert!(matches!(c, Err(HandshakeError::Proof)), "{c:?}");
        assert!(a.is_err(), "{a:?}");
        let (_, a) = run((2, 7, [9; 32]), (3, 7, [9; 32]));
        assert!(
            matches!(
                a,
                Err(HandshakeError::Rank {
                    claimed: 2,
                    expected: 3
                })
            ),
            "{a:?}"
        );
        let (_, a) = run((3, 6, [9; 32]), (3, 7, [9; 32]));
        assert!(
            matches!(
                a,
                Err(HandshakeError::Generation {
                    got: 6,
                    expected: 7
                })
            ),
            "{a:?}"
        );
    }

    /// What an eavesdropper saw of one handshake does not open another: the acceptor's nonce
    /// is fresh, so the recorded proof is wrong for it. And the token's digest never appears.
    #[test]
    fn a_recorded_handshake_cannot_be_replayed() {
        let key = [5u8; 32];
        // Record a genuine exchange.
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let acc = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let r = acceptor(&mut s, 1, 2, &key);
            (r, l)
        });
        struct Tap<'a>(&'a mut TcpStream, Vec<u8>);
        impl Read for Tap<'_> {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                self.0.read(b)
            }
        }
        impl Write for Tap<'_> {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.1.extend_from_slice(b);
                self.0.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.0.flush()
            }
        }
        let mut s = TcpStream::connect(addr).expect("connect");
        let mut tap = Tap(&mut s, Vec::new());
        connector(&mut tap, 1, 2, &key).expect("genuine");
        let sent = tap.1.clone();
        let (r, l) = acc.join().expect("thread");
        r.expect("genuine accepted");
        assert_eq!(sent.len(), HELLO + PROOF);
        assert!(
            !sent.windows(32).any(|w| w == key),
            "the key never crosses the wire"
        );
        // Replay the recorded bytes against a new acceptor.
        let acc = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            acceptor(&mut s, 1, 2, &key)
        });
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(&sent[..HELLO]).expect("hello");
        let mut reply = [0u8; NONCE + PROOF];
        s.read_exact(&mut reply).expect("challenge");
        s.write_all(&sent[HELLO..]).expect("old proof");
        assert!(matches!(
            acc.join().expect("thread"),
            Err(HandshakeError::Proof)
        ));
    }

    /// Replays fixed bytes as the peer and records what this side sends.
    struct Scripted {
        input: std::io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl Read for Scripted {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(b)
        }
    }
    impl Write for Scripted {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Whatever a stranger sends — garbage, or a well-formed hello with made-up proofs —
        /// neither side panics or admits it.
        #[test]
        fn arbitrary_peer_bytes_are_refused_without_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
            well_formed in proptest::prelude::any::<bool>(),
        ) {
            let key = [7u8; 32];
            let mut input = bytes.clone();
            if well_formed {
                let mut hello = MAGIC.to_vec();
                hello.extend_from_slice(&2u32.to_le_bytes());
                hello.extend_from_slice(&9u64.to_le_bytes());
                input.splice(0..0, hello);
            }
            let mut s = Scripted { input: std::io::Cursor::new(input.clone()), output: Vec::new() };
            proptest::prop_assert!(acceptor(&mut s, 2, 9, &key).is_err());
            let mut s = Scripted { input: std::io::Cursor::new(input), output: Vec::new() };
            proptest::prop_assert!(connector(&mut s, 2, 9, &key).is_err());
        }
    }
}
