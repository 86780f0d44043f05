//! Gradient buckets for the overlapped all-reduce (#21): which parameters share a bucket, and
//! the bookkeeping that fills buckets as the backward pass announces gradients and hands each
//! one to the collective, strictly in the plan's order, once it is complete.
//!
//! The flat gradient buffer is the one the non-overlapped path all-reduces (parameters in module
//! order, then the step's flags). A bucket is a contiguous run of whole parameters in it.
//! Buckets are cut from the end of the buffer backwards, because the backward pass finishes the
//! last layers first, and are reduced in that order — the same order on every rank, whatever
//! order the gradients arrive in (a ring all-reduce needs every rank to make the same calls).
//! `ring::all_reduce_sum_bucket` reduces each element exactly as the flat all-reduce does, so
//! the result is bit-identical to it. Pure code: no Burn, no threads; unit-tested here.

use std::ops::Range;

/// The buckets of a flat buffer of parameters with lengths `lens` (elements, module order):
/// each a range of parameter indices, listed in reduction order. Parameters `late..` (the
/// classifier: no kernel announces its gradients on every backend, and it is tiny) form one
/// bucket reduced after all the others, once the backward is done; the rest are cut from the end
/// backwards (the backward finishes the last layers first). A bucket closes at the parameter
/// that brings it to `bucket_elems` elements or more (so it never splits a parameter);
/// `bucket_elems <= 1` gives one bucket per parameter.
pub fn plan(lens: &[usize], bucket_elems: usize, late: usize) -> Vec<Range<usize>> {
    let late = late.min(lens.len());
    let mut buckets = Vec::new();
    let mut end = late;
    let mut size = 0;
    for i in (0..late).rev() {
        size += lens[i];
        if size >= bucket_elems.max(1) {
            buckets.push(i..end);
            end = i;
            size = 0;
        }
    }
    if end > 0 {
        buckets.push(0..end);
    }
    if late < lens.len() {
        buckets.push(late..lens.len());
    }
    buckets
}

/// The elements of a bucket size in MB (10^6 bytes, as PyTorch's `bucket_cap_mb` counts them)
/// of f32 gradients.
pub fn bucket_elems(bucket_mb: f64) -> usize {
    (bucket_mb * 1e6 / 4.0).round().max(0.0) as usize
}

/// A finished bucket on its way to (and back from) the collective: elements
/// `offset..offset + data.len()` of the flat buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// First element's index in the flat buffer.
    pub offset: usize,
    /// The gradients (afterwards: their mean over the group).
    pub data: Vec<f32>,
}

/// A gradient part the buckets hold (host values, or a device tensor): its element count is
/// checked against its parameter's.
pub trait Part {
    /// Elements in the part.
    fn elems(&self) -> usize;
}

impl Part for Vec<f32> {
    fn elems(&self) -> usize {
        self.len()
    }
}

/// A complete bucket, released by [`Slots`]: elements `offset..` of the flat buffer, one part
/// per parameter in module order (`None`: that parameter had no gradient; zeros stand in).
pub struct Released<T> {
    /// First element's index in the flat buffer.
    pub offset: usize,
    /// The parameters' lengths (elements).
    pub lens: Vec<usize>,
    /// The parameters' gradients.
    pub parts: Vec<Option<T>>,
}

struct Filling<T> {
    /// Parameter indices.
    params: Range<usize>,
    /// Flat element offset of the first parameter.
    offset: usize,
    parts: Vec<Option<T>>,
    missing: usize,
}

/// The bookkeeping of the buckets of [`plan`]: gradients arrive in any order and buckets are
/// released in plan order (bucket `k + 1` only after bucket `k`), each as soon as it and all
/// before it are complete. Generic over what a gradient is ([`Filler`]: host values; the
/// trainer's device buckets: tensors).
pub struct Slots<T> {
    offsets: Vec<usize>,
    lens: Vec<usize>,
    bucket_of: Vec<usize>,
    filled: Vec<bool>,
    buckets: Vec<Option<Filling<T>>>,
    next: usize,
}

/// Why a gradient could not be placed (a caller's bug, reported rather than panicking).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FillError {
    /// No such parameter in the plan.
    #[error("parameter {0} is not in the bucket plan")]
    Unknown(usize),
    /// The gradient's length is not the parameter's.
    #[error("parameter {param}: gradient of {got} elements, expected {expected}")]
    Length {
        /// Parameter index.
        param: usize,
        /// Elements given.
        got: usize,
        /// Elements expected.
        expected: usize,
    },
    /// The parameter's gradient was already placed (a parameter used twice in the forward).
    #[error("parameter {0} got a second gradient; its bucket may already be reduced")]
    Twice(usize),
}

impl<T: Part> Slots<T> {
    /// Buckets `plan` over parameters of lengths `lens` (module order; the flat buffer is their
    /// concatenation). Buckets without parameters are due at once ([`Self::due`]).
    pub fn new(lens: &[usize], plan: &[Range<usize>]) -> Self {
        let mut offsets = Vec::with_capacity(lens.len());
        let mut at = 0;
        for &n in lens {
            offsets.push(at);
            at += n;
        }
        let mut bucket_of = vec![0; lens.len()];
        let buckets = plan
            .iter()
            .enumerate()
            .map(|(k, r)| {
                r.clone().for_each(|p| bucket_of[p] = k);
                Some(Filling {
                    params: r.clone(),
                    offset: offsets.get(r.start).copied().unwrap_or(at),
                    parts: (0..r.len()).map(|_| None).collect(),
                    missing: r.len(),
                })
            })
            .collect();
        Self {
            offsets,
            lens: lens.to_vec(),
            bucket_of,
            filled: vec![false; lens.len()],
            buckets,
            next: 0,
        }
    }

    /// Whether parameter `p`'s gradient has been placed.
    pub fn has(&self, p: usize) -> bool {
        self.filled.get(p).copied().unwrap_or(false)
    }

    /// Places parameter `p`'s gradient (`None`: it has none this step) and returns every
    /// bucket that is now due, in plan order.
    pub fn put(&mut self, p: usize, grad: Option<T>) -> Result<Vec<Released<T>>, FillError> {
        let expected = *self.lens.get(p).ok_or(FillError::Unknown(p))?;
        if self.filled[p] {
            return Err(FillError::Twice(p));
        }
        if let Some(g) = &grad {
            if g.elems() != expected {
                return Err(FillError::Length {
                    param: p,
                    got: g.elems(),
                    expected,
                });
            }
        }
        let k = self.bucket_of[p];
        let Some(b) = self.buckets[k].as_mut() else {
            return Err(FillError::Twice(p)); // unreachable: a released bucket has no gaps
        };
        b.parts[p - b.params.start] = grad;
        b.missing -= 1;
        self.filled[p] = true;
        Ok(self.due())
    }

    /// Parameters not yet placed, in module order.
    pub fn missing(&self) -> Vec<usize> {
        (0..self.filled.len())
            .filter(|&p| !self.filled[p])
            .collect()
    }

    /// Buckets released so far.
    pub fn released(&self) -> usize {
        self.next
    }

    /// Takes the buckets that are due now, in plan order.
    pub fn due(&mut self) -> Vec<Released<T>> {
        let mut out = Vec::new();
        while let Some(slot) = self.buckets.get_mut(self.next) {
            match slot {
                Some(b) if b.missing == 0 => {
                    let b = slot.take().expect("matched Some");
                    out.push(Released {
                        offset: b.offset,
                        lens: self.lens[b.params.clone()].to_vec(),
                        parts: b.parts,
                    });
                    self.next += 1;
                }
                _ => break,
            }
        }
        debug_assert!(self.offsets.len() == self.lens.len());
        out
    }
}

/// [`Slots`] of host values: releases each due bucket to `send` as one contiguous [`Bucket`].
pub struct Filler<S: FnMut(Bucket)> {
    slots: Slots<Vec<f32>>,
    send: S,
}

impl<S: FnMut(Bucket)> Filler<S> {
    /// Buckets `plan` over parameters of lengths `lens` (module order; the flat buffer is their
    /// concatenation), releasing complete ones to `send`.
    pub fn new(lens: &[usize], plan: &[Range<usize>], send: S) -> Self {
        let mut f = Self {
            slots: Slots::new(lens, plan),
            send,
        };
        let due = f.slots.due();
        f.emit(due);
        f
    }

    /// Whether parameter `p`'s gradient has been placed.
    pub fn has(&self, p: usize) -> bool {
        self.slots.has(p)
    }

    /// Places parameter `p`'s gradient (`None`: it has none this step, zeros stand in) and
    /// releases every bucket that is now due.
    pub fn put(&mut self, p: usize, grad: Option<Vec<f32>>) -> Result<(), FillError> {
        let due = self.slots.put(p, grad)?;
        self.emit(due);
        Ok(())
    }

    /// Parameters not yet placed, in module order.
    pub fn missing(&self) -> Vec<usize> {
        self.slots.missing()
    }

    /// Buckets released so far.
    pub fn released(&self) -> usize {
        self.slots.released()
    }

    fn emit(&mut self, due: Vec<Released<Vec<f32>>>) {
        for r in due {
            let mut data = Vec::with_capacity(r.lens.iter().sum());
            for (part, &n) in r.parts.iter().zip(&r.lens) {
                match part {
                    Some(g) => data.extend_from_slice(g),
                    None => data.resize(data.len() + n, 0.0),
                }
            }
            (self.send)(Bucket {
                offset: r.offset,
                data,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cut_from_the_end_and_close_once_full() {
        // lens 4 3 5 2 6, cap 7: from the end 6 (<7) + 2 = 8 -> [3, 5); 5 + 3 = 8 -> [1, 3);
        // 4 left over -> [0, 1).
        assert_eq!(plan(&[4, 3, 5, 2, 6], 7, 5), vec![3..5, 1..3, 0..1]);
        // The parameter that reaches the cap closes the bucket it joins.
        assert_eq!(plan(&[1, 100, 1], 10, 3), vec![1..3, 0..1]);
        // One bucket when the cap exceeds everything; one per parameter at cap 0 or 1.
        assert_eq!(plan(&[4, 3, 5], 1000, 3), vec![0..3]);
        assert_eq!(plan(&[4, 3, 5], 0, 3), vec![2..3, 1..2, 0..1]);
        assert_eq!(plan(&[], 10, 0), Vec::<Range<usize>>::new());
        // Late parameters (the classifier): one bucket, last, whatever the cap.
        assert_eq!(plan(&[4, 3, 5, 2, 6], 7, 3), vec![1..3, 0..1, 3..5]);
        assert_eq!(plan(&[4, 3], 1, 0), vec![0..2]);
        assert_eq!(plan(&[4, 3], 1, 9), vec![1..2, 0..1]);
        // 25 MB of f32: 6.25 million elements.
        assert_eq!(bucket_elems(25.0), 6_250_000);
        assert_eq!(bucket_elems(0.000_004), 1);
    }

    type Sent = std::rc::Rc<std::cell::RefCell<Vec<Bucket>>>;

    fn filler(lens: &[usize], cap: usize) -> (Filler<impl FnMut(Bucket)>, Sent) {
        let sent = Sent::default();
        let s = sent.clone();
        let f = Filler::new(lens, &plan(lens, cap, lens.len()), move |b| {
            s.borrow_mut().push(b)
        });
        (f, sent)
    }

    #[test]
    fn buckets_go_out_in_plan_order_as_soon_as_they_and_all_before_are_complete() {
        // lens 2 1 2 3, cap 3: buckets [3, 4) (elements 5..8), [1, 3) (2..5), [0, 1) (0..2).
        let (mut f, sent) = filler(&[2, 1, 2, 3], 3);
        f.put(1, Some(vec![10.0])).expect("placed");
        f.put(2, Some(vec![20.0, 21.0])).expect("placed");
        assert!(sent.borrow().is_empty(), "bucket 1 waits for bucket 0");
        f.put(3, Some(vec![30.0, 31.0, 32.0])).expect("placed");
        assert_eq!(
            *sent.borrow(),
            vec![
                Bucket {
                    offset: 5,
                    data: vec![30.0, 31.0, 32.0]
                },
                Bucket {
                    offset: 2,
                    data: vec![10.0, 20.0, 21.0]
                },
            ]
        );
        assert_eq!((f.released(), f.missing()), (2, vec![0]));
        // No gradient: zeros stand in.
        f.put(0, None).expect("placed");
        assert_eq!(
            sent.borrow()[2],
            Bucket {
                offset: 0,
                data: vec![0.0, 0.0]
            }
        );
        assert!(f.missing().is_empty());
    }

    #[test]
    fn wrong_gradients_are_refused_by_name() {
        let (mut f, _) = filler(&[2, 1], 1);
        assert_eq!(f.put(5, None), Err(FillError::Unknown(5)));
        assert_eq!(
            f.put(0, Some(vec![1.0])),
            Err(FillError::Length {
                param: 0,
                got: 1,
                expected: 2
            })
        );
        f.put(1, Some(vec![1.0])).expect("placed");
        assert_eq!(f.put(1, Some(vec![1.0])), Err(FillError::Twice(1)));
        assert!(f.has(1) && !f.has(0));
    }
}
