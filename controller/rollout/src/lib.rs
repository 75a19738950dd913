pub mod crd;
mod duration;
pub mod engine;
pub mod wire;

pub use duration::parse_duration;
