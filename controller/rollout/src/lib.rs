pub mod crd;
pub mod engine;
