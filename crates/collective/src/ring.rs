//! The ring all-reduce and broadcast, written once over a [`RingLink`].

use crate::CollectiveError;

/// Elements per message. Large enough to amortise per-message overhead, small enough that the
/// next segment is in flight while the previous one is being added (pipelining).
pub const SEGMENT: usize = 256 * 1024;

/// A rank's two neighbours: it sends to `rank + 1` and receives from `rank - 1` (mod world).
pub trait RingLink {
    /// This rank.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Sends `data` to the next rank. Must not wait for the receiver (buffered or threaded), or
    /// a ring where everyone sends first would deadlock.
    fn send(&mut self, data: &[f32]) -> Result<(), CollectiveError>;
    /// Receives exactly `out.len()` elements from the previous rank.
    fn recv(&mut self, out: &mut [f32]) -> Result<(), CollectiveError>;
}

/// Chunk `i` of `n` over `len` elements: `[i*len/n, (i+1)*len/n)`. Sizes differ by at most one
/// and may be zero when `len < n`.
pub fn chunk(len: usize, n: usize, i: usize) -> std::ops::Range<usize> {
    (i * len / n)..((i + 1) * len / n)
}

/// In-place ring all-reduce (sum). Reduce-scatter: in step `s`, send chunk `r - s`, receive chunk
/// `r - s - 1` and add it in; afterwards rank `r` holds the complete sum of chunk `r + 1`.
/// All-gather: in step `s`, send chunk `r + 1 - s`, receive chunk `r - s` and overwrite it.
///
/// Sends never block (see [`RingLink::send`]), so each step queues its chunk's segments and then
/// consumes the predecessor's: the transfer of later segments overlaps the addition of earlier ones.
pub fn all_reduce_sum<L: RingLink>(link: &mut L, buf: &mut [f32]) -> Result<(), CollectiveError> {
    let (n, r) = (link.world(), link.rank());
    if n <= 1 {
        return Ok(());
    }
    let len = buf.len();
    let at = |k: isize| chunk(len, n, k.rem_euclid(n as isize) as usize);
    let mut scratch = vec![0f32; SEGMENT.min(len / n + 1)];
    for s in 0..n as isize - 1 {
        for seg in segments(at(r as isize - s)) {
            link.send(&buf[seg])?;
        }
        for seg in segments(at(r as isize - s - 1)) {
            let tmp = &mut scratch[..seg.len()];
            link.recv(tmp)?;
            for (d, v) in buf[seg].iter_mut().zip(tmp.iter()) {
                *d += *v;
            }
        }
    }
    for s in 0..n as isize - 1 {
        for seg in segments(at(r as isize + 1 - s)) {
            link.send(&buf[seg])?;
        }
        for seg in segments(at(r as isize - s)) {
            link.recv(&mut buf[seg])?;
        }
    }
    Ok(())
}

/// A range cut into [`SEGMENT`]-sized pieces.
fn segments(r: std::ops::Range<usize>) -> impl Iterator<Item = std::ops::Range<usize>> {
    let end = r.end;
    (r.start..end)
        .step_by(SEGMENT)
        .map(move |s| s..(s + SEGMENT).min(end))
}

/// Pipelined broadcast along the ring from `root`: each rank receives a segment from its
/// predecessor and forwards it, except the rank just before the root.
pub fn broadcast<L: RingLink>(
    link: &mut L,
    buf: &mut [f32],
    root: usize,
) -> Result<(), CollectiveError> {
    let (n, r) = (link.world(), link.rank());
    if n <= 1 {
        return Ok(());
    }
    let last = (root + n - 1) % n;
    for seg in segments(0..buf.len()) {
        if r != root {
            link.recv(&mut buf[seg.clone()])?;
        }
        if r != last {
            link.send(&buf[seg])?;
        }
    }
    Ok(())
}
