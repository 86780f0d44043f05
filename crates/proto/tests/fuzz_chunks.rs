//! Property tests of checkpoint-chunk reassembly (what the coordinator does with an upload and a
//! worker with a download): any stream — a genuine one damaged by dropped, repeated, swapped or
//! altered chunks, or one made up from scratch — is reassembled exactly or refused with a
//! message; never a panic, never a corrupted checkpoint accepted, never more memory promised
//! than the limit.

use proptest::prelude::*;
use resnet_proto::checkpoint::{to_chunks, Assembler};
use resnet_proto::v1::{CheckpointChunk, CheckpointFile, CheckpointHeader};
use resnet_proto::CheckpointFiles;

fn sample(sizes: &[usize]) -> CheckpointFiles {
    CheckpointFiles {
        worker_id: "w0".into(),
        rank: 0,
        generation: 1,
        step: 7,
        epoch: 0,
        files: sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                (
                    format!("f{i}.bin"),
                    (0..n).map(|k| (k * 7 + i) as u8).collect(),
                )
            })
            .collect(),
    }
}

fn assemble(chunks: Vec<CheckpointChunk>, max: u64) -> Result<CheckpointFiles, String> {
    let mut a = Assembler::new(max);
    for c in chunks {
        a.push(c)?;
    }
    a.finish()
}

#[derive(Debug, Clone)]
enum Damage {
    Drop(usize),
    Repeat(usize),
    Swap(usize, usize),
    Flip(usize, usize, u8),
    Offset(usize, u64),
    File(usize, u32),
    Size(usize, u64),
    Truncate(usize, usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::Drop),
        any::<usize>().prop_map(Damage::Repeat),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Damage::Swap(a, b)),
        (any::<usize>(), any::<usize>(), 1u8..).prop_map(|(a, b, x)| Damage::Flip(a, b, x)),
        (any::<usize>(), any::<u64>()).prop_map(|(a, o)| Damage::Offset(a, o)),
        (any::<usize>(), any::<u32>()).prop_map(|(a, f)| Damage::File(a, f)),
        (any::<usize>(), any::<u64>()).prop_map(|(a, s)| Damage::Size(a, s)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, n)| Damage::Truncate(a, n)),
    ]
}

fn apply(chunks: &mut Vec<CheckpointChunk>, d: &Damage) {
    let n = chunks.len();
    if n == 0 {
        return;
    }
    match *d {
        Damage::Drop(i) => {
            chunks.remove(i % n);
        }
        Damage::Repeat(i) => {
            let c = chunks[i % n].clone();
            chunks.insert(i % n, c);
        }
        Damage::Swap(a, b) => chunks.swap(a % n, b % n),
        Damage::Flip(i, k, x) => {
            let c = &mut chunks[i % n];
            if !c.data.is_empty() {
                let k = k % c.data.len();
                c.data[k] ^= x;
            }
        }
        Damage::Offset(i, o) => chunks[i % n].offset = o,
        Damage::File(i, f) => chunks[i % n].file = f,
        Damage::Size(i, s) => {
            if let Some(h) = chunks[0].header.as_mut() {
                let k = i % h.files.len().max(1);
                if let Some(f) = h.files.get_mut(k) {
                    f.size = s;
                }
            }
        }
        Damage::Truncate(i, len) => {
            let c = &mut chunks[i % n];
            c.data.truncate(len % (c.data.len() + 1));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_damaged_stream_is_refused_or_exactly_the_original(
        sizes in proptest::collection::vec(0usize..200_000, 1..4),
        damages in proptest::collection::vec(damage(), 1..4),
    ) {
        let original = sample(&sizes);
        let mut chunks = to_chunks(&original);
        for d in &damages {
            apply(&mut chunks, d);
        }
        match assemble(chunks, 1 << 30) {
            Ok(got) => prop_assert_eq!(got, original, "a damaged stream was accepted altered"),
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }

    #[test]
    fn a_made_up_stream_never_panics_and_respects_the_limit(
        names in proptest::collection::vec(".{0,20}", 0..5),
        sizes in proptest::collection::vec(any::<u64>(), 0..5),
        chunks in proptest::collection::vec((any::<u32>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..8),
        limit in 0u64..10_000,
    ) {
        let header = CheckpointHeader {
            worker_id: "x".into(),
            rank: 0,
            generation: 0,
            step: 0,
            epoch: 0,
            files: names
                .iter()
                .zip(&sizes)
                .map(|(n, &s)| CheckpointFile { name: n.clone(), size: s, sha256: "0".repeat(64) })
                .collect(),
        };
        let declared: u64 = header.files.iter().map(|f| f.size).fold(0, u64::saturating_add);
        let mut stream = vec![CheckpointChunk { header: Some(header), file: 0, offset: 0, data: vec![] }];
        stream.extend(chunks.into_iter().map(|(file, offset, data)| CheckpointChunk { header: None, file, offset, data }));
        let r = assemble(stream, limit);
        if declared > limit {
            prop_assert!(r.is_err(), "a stream declaring {} bytes passed a limit of {}", declared, limit);
        }
        // Made-up SHA-256s never match non-empty data, so only all-empty files can pass.
        if let Ok(c) = r {
            prop_assert!(c.files.iter().all(|(_, d)| d.is_empty()));
        }
    }
}
