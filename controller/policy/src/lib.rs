//! The Palisade policy language. Pure: callers hand in file names and text, nothing here reads
//! files, talks to Kubernetes or touches the kernel.
pub mod api;
pub mod bench;
pub mod cluster;
pub mod compile;
pub mod diag;
pub mod diff;
pub mod identity;
pub mod l7;
pub mod labels;
pub mod lint;
pub mod model;
pub mod parse;
pub mod selector;
pub mod trace;
pub mod yaml;

pub use cluster::Cluster;
pub use compile::{AllowLocalhost, CompileOptions, CompiledPolicy, EnforcementMode, IdentityBasis};
pub use diag::{Diagnostic, Severity};
pub use l7::{HttpRequest, HttpRewrite, L7Request, RequestVerdict};
pub use model::{Direction, PolicySet};
pub use parse::{ParseOptions, Parsed, SourceFile, parse_policies};
pub use trace::FlowPort;
