pub mod crd;
mod duration;
pub mod engine;

pub use duration::parse_duration;
