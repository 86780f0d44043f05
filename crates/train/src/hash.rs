//! A fingerprint of a model's exact values, used to prove replicas and resumed runs identical.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, Tensor};
use sha2::{Digest, Sha256};

struct Hasher(Sha256);

impl<B: Backend> ModuleVisitor<B> for Hasher {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let data = param.val().into_data();
        self.0.update(format!("{:?}", data.shape).as_bytes());
        self.0.update(data.as_bytes());
    }
}

/// SHA-256 over every float tensor (parameters and BatchNorm running statistics) in visit order,
/// shapes included. Reading every parameter also materialises lazily initialised ones.
pub fn param_hash<B: Backend, M: Module<B>>(module: &M) -> String {
    let mut h = Hasher(Sha256::new());
    module.visit(&mut h);
    h.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
