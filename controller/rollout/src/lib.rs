pub mod crd;
pub mod digest;
mod duration;
pub mod engine;
pub mod wire;

pub use duration::parse_duration;
