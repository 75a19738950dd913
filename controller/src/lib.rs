//! The Palisade controller and its `palisade` command line.
pub mod cmd;
pub mod files;
mod render;
