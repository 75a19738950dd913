//! The Kubernetes controller: a kube-runtime `Controller` for PolicyRollouts that drives the Git
//! source and the pure rollout engine, writes PolicyRevisions and the status, and serves
//! metrics, probes and the push webhook. The engine decides; this module only reads the cluster
//! for it and carries out what it decides.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::events::Reporter;
use palisade_rollout::wire::CONTROLLER_FIELD_MANAGER;

mod cache;
mod fetch;
mod leader;
mod metrics;
mod reconcile;
mod report_index;
mod revision;
mod run;
mod source_settings;
pub mod step;

pub use cache::{Caches, REPORT_WINDOW, Triggers};
pub use fetch::{Due, Sources};
pub use leader::LeaseLock;
pub use metrics::Metrics;
pub use palisade_process::{OpenMetrics, Readiness, router as metrics_router, shutdown_signal};
pub use reconcile::{error_policy, reconcile};
pub use revision::{Fetched, revision_name};
pub use run::{Options, RunError, Webhook, control, run};
pub use source_settings::{AllowedSources, SecretStore};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("Git source cache: {0}")]
    Source(#[from] palisade_source::Error),
    #[error("source worker: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error("the controller's caches stopped: {0}")]
    Cache(#[from] kube::runtime::reflector::store::WriterDropped),
    #[error("the controller's caches stopped: {0}")]
    ReportIndex(#[from] report_index::IndexStopped),
    #[error("PolicyRollout {0} has no namespace")]
    NoNamespace(String),
    #[error("the engine staged {0}, which the last fetch did not produce")]
    UnknownRevision(String),
    /// Local mode's state directory, or its agent.
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

/// Where the controller runs and what it watches besides rollouts.
#[derive(Clone, Debug)]
pub struct Config {
    /// The controller's own namespace: only rollouts there may use `scope: Cluster`, and the
    /// agent Pods are looked up there.
    pub namespace: String,
    /// Label selector of the agent Pods; their nodes are the ones the promotion barrier waits for.
    pub agent_selector: String,
    /// Git mirrors, one per rollout.
    pub cache_dir: PathBuf,
    /// Which source URLs may be fetched (`--allow-insecure-sources`).
    pub allowed_sources: AllowedSources,
}

/// The time the engine is given: the wall clock, or a test's.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

pub struct Context {
    pub client: Client,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// What reconciles read of the cluster.
    pub caches: Caches,
    reporter: Reporter,
    sources: Sources,
    clock: Clock,
    /// Consecutive failures per rollout, for the exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, config: Config, caches: Caches, metrics: Arc<Metrics>, clock: Clock) -> Self {
        let instance = std::env::var("POD_NAME").ok().or_else(|| Reporter::from(CONTROLLER_FIELD_MANAGER).instance);
        let reporter = Reporter { controller: CONTROLLER_FIELD_MANAGER.into(), instance };
        Context {
            reporter,
            sources: Sources::new(config.cache_dir.clone(), config.allowed_sources),
            client,
            config,
            caches,
            metrics,
            clock,
            failures: Mutex::default(),
        }
    }
}
