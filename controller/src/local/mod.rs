//! Local mode: the controller and the agent in one process against a cluster file whose pods
//! are network namespaces on this machine, with a state directory instead of the API server.
pub mod run;
pub mod store;
