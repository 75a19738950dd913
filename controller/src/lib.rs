//! The Palisade controller and its `palisade` command line.
pub mod bench_workload;
pub mod cmd;
pub mod controller;
pub mod files;
pub mod local;
pub mod rbac;
