//! Moving between a generic backend's tensors and a concrete backend's, once a `TypeId` check
//! has established that they are the same type.

use std::any::Any;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `Some(a as T)` when `A` and `T` are the same type.
pub(crate) fn cast<A: 'static, T: 'static>(a: A) -> Option<T> {
    (Box::new(a) as Box<dyn Any>)
        .downcast::<T>()
        .ok()
        .map(|b| *b)
}

/// The float primitive behind `t`.
pub(crate) fn float_primitive<B: Backend, const D: usize>(
    t: Tensor<B, D>,
) -> B::FloatTensorPrimitive {
    t.into_primitive().tensor()
}
