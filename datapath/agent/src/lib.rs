//! Palisade's node agent: it connects the controller's revisions to the node's eBPF datapath.
//!
//! The agent is fed [`Change`]s (from Kubernetes watches, or from the local cluster in local
//! mode: the same code either way), keeps node-local identities and the ipcache, compiles the
//! enforced and the candidate revision of every rollout for each local endpoint, programs both
//! policy slots, flips them when a rollout promotes, and reports what the candidate would change
//! ([`Agent::reports`]).
mod agent;
pub mod cluster_watch;
mod control_plane;
mod dataplane;
mod drops;
pub mod flow_access;
pub mod fqdn;
mod input;
mod node_state;
pub mod observe;
pub mod preflight;
pub mod proxy;
mod report;
pub mod report_writer;
pub mod runtime;
mod slim_pod;

pub use agent::{Agent, AgentConfig, EndpointInfo, Error};
pub use dataplane::{
    Dataplane, EventQueue, FlowEvents, Interface, InterfaceResolver, RecordedEndpoint, RecordingDataplane,
    RouteResolver, SlotOp,
};
pub use input::Change;
pub use report::{AUDIT_FLOW_CAP, report_name, workload_of};
