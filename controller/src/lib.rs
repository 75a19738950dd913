//! The Palisade controller and its `palisade` command line.
/// The synthetic workload of `palisade bench policy`, shared with the agent's benchmark.
pub use palisade_policy::bench as bench_workload;
pub mod cmd;
pub mod files;
pub mod local;
pub mod rbac;
pub mod reconciler;
