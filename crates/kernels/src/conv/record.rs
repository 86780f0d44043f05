//! Which convolutions a closure ran: `resnet profile` enumerates a model's convolutions by
//! running it once, so there is no second description of the architecture to keep in step.
//! A scoped, per-thread observation (nothing is recorded outside [`record_geometries`]), not a
//! setting.

use std::cell::RefCell;

use super::ConvGeom;

thread_local! {
    static RECORDED: RefCell<Option<Vec<ConvGeom>>> = const { RefCell::new(None) };
}

/// Runs `f` and returns, with its result, the geometry of every convolution it ran through
/// [`super::conv2d`] on this thread, in order.
pub fn record_geometries<R>(f: impl FnOnce() -> R) -> (R, Vec<ConvGeom>) {
    RECORDED.with(|r| *r.borrow_mut() = Some(Vec::new()));
    let out = f();
    let seen = RECORDED.with(|r| r.borrow_mut().take()).unwrap_or_default();
    (out, seen)
}

/// Notes `g` when a recording is under way on this thread.
pub(super) fn seen(g: ConvGeom) {
    RECORDED.with(|r| r.borrow_mut().as_mut().map(|seen| seen.push(g)));
}
