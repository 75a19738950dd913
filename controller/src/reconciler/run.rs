//! `palisade controller run`: probes and metrics from the start on every replica, the push webhook
//! on every replica, and the reconciler on the one that holds the Lease.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::{Controller, Predicate, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use palisade_rollout::crd::{GitRef, GitSource, PolicyRollout};
use palisade_rollout::wire::{CONTROLLER_FIELD_MANAGER, RECONCILE_ANNOTATION};
use palisade_source::webhook::{Provider, Receiver, SyncRequest};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::leader::LeaseLock;
use super::{
    Caches, Config, Context, Metrics, Readiness, Triggers, error_policy, metrics_router, reconcile, shutdown_signal,
};

/// How long a Lease holds without renewal, and how often the holder renews it (client-go's
/// defaults: 15 s and 2 s retry; renewal well inside the duration).
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(5);

pub struct Webhook {
    pub addr: SocketAddr,
    pub path: String,
    pub provider: Provider,
}

pub struct Options {
    pub config: Config,
    pub metrics_addr: SocketAddr,
    pub webhook: Option<Webhook>,
    pub lease_name: String,
    /// This replica's name in the Lease and in Events.
    pub identity: String,
    /// The kubeconfig to reach the API server with (its current context); in-cluster or the
    /// kubeconfig kube infers when unset.
    pub kubeconfig: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// kube's message already holds its cause.
    #[error("--kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("{addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("lost the leader lease {0}; exiting so that a replica can take over")]
    LostLease(String),
}

pub async fn run(options: Options) -> Result<(), RunError> {
    let client = match &options.kubeconfig {
        Some(path) => {
            let unusable = |e: kube::config::KubeconfigError| RunError::Kubeconfig(e.to_string());
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(unusable)?;
            let config =
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.map_err(unusable)?;
            Client::try_from(config)?
        }
        None => Client::try_default().await?,
    };
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(Readiness::default());
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    });

    serve(options.metrics_addr, metrics_router(metrics.clone(), ready.clone()), stop.clone()).await?;
    if let Some(webhook) = options.webhook {
        // Every replica takes pushes: they become requestedAt annotations, which the leader sees.
        let (trigger, requests) = mpsc::channel(16);
        let router = Receiver::new(webhook.provider, trigger).router(&webhook.path);
        serve(webhook.addr, router, stop.clone()).await?;
        tokio::spawn(request_syncs(client.clone(), requests));
    }
    client.apiserver_version().await?;
    ready.set(true);

    let lock = LeaseLock::new(
        client.clone(),
        &options.config.namespace,
        &options.lease_name,
        &options.identity,
        LEASE_DURATION,
    );
    if !acquire(&lock, stop.clone()).await? {
        return Ok(());
    }
    info!(lease = %options.lease_name, identity = %options.identity, "leading");
    let (lost_tx, mut lost) = watch::channel(false);
    let (done_tx, done) = watch::channel(false);
    let renewer = tokio::spawn(renew(lock, done, lost_tx));

    let (caches, triggers) = Caches::start(&client, &options.config);
    let ctx = Arc::new(Context::new(client.clone(), options.config, caches, metrics, Arc::new(Timestamp::now)));
    let mut stopping = stop.clone();
    let halt = async move {
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => {}
            _ = lost.wait_for(|l| *l) => {}
        }
    };
    control(ctx, triggers, halt).await;
    // Step down only once in-flight reconciles have finished, so two leaders never overlap.
    let _ = done_tx.send(true);
    match renewer.await {
        Ok(Some(reason)) => Err(RunError::LostLease(reason)),
        _ => Ok(()),
    }
}

/// The Controller: rollouts watched, and reconciled on `triggers` (their reports, revisions and
/// decisions changed, as the caches of `ctx` saw) until `halt`.
pub async fn control(ctx: Arc<Context>, triggers: Triggers, halt: impl Future<Output = ()> + Send + Sync + 'static) {
    // Every reconcile waits for the caches' first lists. Waiting once here, before any runs,
    // matters: kube's readiness signal wakes only the last of several tasks waiting on it at
    // once, so rollouts whose first reconciles started before a large cache was listed (5,000
    // agent Pods and Nodes) would wait forever, every rollout but one.
    if let Err(e) = ctx.caches.ready().await {
        warn!(error = %e, "a cache stopped before its first list; not reconciling");
        return;
    }
    // A rollout's own status writes are not changes to act on: every status write would
    // otherwise cost a second reconcile that finds nothing to do. Its spec (generation), its
    // annotations (a sync asked for), finalizers and deletion are.
    let (reader, writer) = reflector::store();
    let rollouts = watcher(Api::<PolicyRollout>::all(ctx.client.clone()), watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(acted_on, Default::default());
    Controller::for_stream(rollouts, reader)
        .reconcile_on(triggers)
        .graceful_shutdown_on(halt)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "controller");
            }
        })
        .await;
}

/// What of a rollout, when it changes, asks for a reconcile: all but its status.
fn acted_on(rollout: &PolicyRollout) -> Option<u64> {
    let deleting = |r: &PolicyRollout| Some(r.metadata.deletion_timestamp.is_some().into());
    predicates::generation
        .combine(predicates::annotations)
        .combine(predicates::finalizers)
        .combine(deleting)
        .hash_property(rollout)
}

async fn serve(addr: SocketAddr, router: axum::Router, mut stop: watch::Receiver<bool>) -> Result<(), RunError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| RunError::Listen { addr, source })?;
    info!(%addr, "listening");
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
            error!(%addr, error = %e, "server stopped");
        }
    });
    Ok(())
}

/// Waits for the Lease; `Ok(false)` when asked to stop first.
async fn acquire(lock: &LeaseLock, mut stop: watch::Receiver<bool>) -> Result<bool, RunError> {
    loop {
        match lock.try_acquire_or_renew().await {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "leader election"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(false),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Renews until the controller is done, then releases the Lease. Returns the reason when the
/// Lease was lost instead: not renewed within its duration, or taken by another replica.
async fn renew(lock: LeaseLock, mut done: watch::Receiver<bool>, lost: watch::Sender<bool>) -> Option<String> {
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = done.wait_for(|d| *d) => break,
            _ = tokio::time::sleep(RENEW_EVERY) => {}
        }
        let reason = match lock.try_acquire_or_renew().await {
            Ok(true) => {
                last_renewal = tokio::time::Instant::now();
                continue;
            }
            Ok(false) => "another replica holds it".to_string(),
            Err(e) if last_renewal.elapsed() < LEASE_DURATION - RENEW_EVERY => {
                warn!(error = %e, "could not renew the lease; retrying");
                continue;
            }
            Err(e) => e.to_string(),
        };
        let _ = lost.send(true);
        return Some(reason);
    }
    if let Err(e) = lock.release().await {
        warn!(error = %e, "could not release the lease; the other replica waits for it to expire");
    }
    None
}

/// Turns each push into a `requestedAt` annotation on the rollouts that fetch the pushed
/// repository and follow the pushed ref (see [`wants_sync`]).
async fn request_syncs(client: Client, mut requests: mpsc::Receiver<SyncRequest>) {
    let api: Api<PolicyRollout> = Api::all(client.clone());
    while let Some(request) = requests.recv().await {
        let rollouts = match api.list(&Default::default()).await {
            Ok(list) => list.items,
            Err(e) => {
                warn!(error = %e, "webhook: could not list rollouts");
                continue;
            }
        };
        let now = Timestamp::now().to_string();
        let patch = json!({"metadata": {"annotations": {RECONCILE_ANNOTATION: now}}});
        let wanted: Vec<&PolicyRollout> = rollouts.iter().filter(|r| wants_sync(&r.spec.source, &request)).collect();
        if wanted.is_empty() {
            info!(
                reference = ?request.reference, repositories = ?request.repositories,
                "webhook: no rollout fetches the pushed repository and ref"
            );
        }
        for rollout in wanted {
            let api: Api<PolicyRollout> = Api::namespaced(client.clone(), &rollout.namespace().unwrap_or_default());
            let params = PatchParams { field_manager: Some(CONTROLLER_FIELD_MANAGER.into()), ..Default::default() };
            match api.patch(&rollout.name_any(), &params, &Patch::Merge(&patch)).await {
                Ok(_) => info!(rollout = %rollout.name_any(), commit = ?request.commit, "webhook: sync requested"),
                Err(e) => warn!(rollout = %rollout.name_any(), error = %e, "webhook: could not request a sync"),
            }
        }
    }
}

/// Whether a push may move what a rollout with `source` fetches: its repository is one the payload
/// names (any, when it names none; URLs compared normalized, so `git@host:org/repo` matches
/// `https://host/org/repo.git`) and it [`follows`] the pushed ref.
fn wants_sync(source: &GitSource, request: &SyncRequest) -> bool {
    request.names_repository(&source.url) && follows(&source.git_ref, request.reference.as_deref())
}

/// Whether a push of `reference` (`refs/heads/main`, `refs/tags/v1.2.0`; None: unknown) may move
/// what a rollout with `git_ref` fetches.
fn follows(git_ref: &GitRef, reference: Option<&str>) -> bool {
    let Some(reference) = reference else { return git_ref.commit.is_none() };
    if let Some(branch) = reference.strip_prefix("refs/heads/") {
        return git_ref.branch.as_deref() == Some(branch);
    }
    if let Some(tag) = reference.strip_prefix("refs/tags/") {
        return git_ref.tag.as_deref() == Some(tag) || git_ref.semver.is_some();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_ref(json: serde_json::Value) -> GitRef {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn pushes_sync_the_rollouts_on_the_pushed_ref() {
        let main = git_ref(json!({"branch": "main"}));
        assert!(follows(&main, Some("refs/heads/main")));
        assert!(!follows(&main, Some("refs/heads/dev")));
        assert!(!follows(&main, Some("refs/tags/main")));
        assert!(follows(&main, None));
        assert!(follows(&git_ref(json!({"tag": "v1"})), Some("refs/tags/v1")));
        assert!(follows(&git_ref(json!({"semver": ">=1"})), Some("refs/tags/v2.0.0")));
        let pinned = git_ref(json!({"commit": "0".repeat(40)}));
        assert!(!follows(&pinned, Some("refs/heads/main")) && !follows(&pinned, None));
    }

    #[test]
    fn pushes_sync_only_the_rollouts_on_the_pushed_repository() {
        let source = |url: &str, git_ref: serde_json::Value| -> GitSource {
            serde_json::from_value(json!({"url": url, "ref": git_ref})).unwrap()
        };
        let policies = source("https://github.com/acme/policies.git", json!({"branch": "main"}));
        let policies_ssh = source("ssh://git@github.com/acme/policies", json!({"branch": "main"}));
        let policies_dev = source("https://github.com/acme/policies", json!({"branch": "dev"}));
        let other = source("https://github.com/acme/other-policies.git", json!({"branch": "main"}));
        let elsewhere = source("https://gitlab.example.com/acme/policies.git", json!({"branch": "main"}));
        let push = |repositories: &[&str]| SyncRequest {
            delivery: Some("d1".into()),
            commit: Some("1".repeat(40)),
            reference: Some("refs/heads/main".into()),
            repositories: repositories.iter().map(|r| r.to_string()).collect(),
        };
        let synced = |request: &SyncRequest| {
            [&policies, &policies_ssh, &policies_dev, &other, &elsewhere].map(|s| wants_sync(s, request))
        };

        // GitHub names the clone, SSH and web URLs of acme/policies.
        let github = push(&[
            "https://github.com/acme/policies.git",
            "git@github.com:acme/policies.git",
            "https://github.com/acme/policies",
        ]);
        assert_eq!(synced(&github), [true, true, false, false, false]);
        // Only the scp-like URL is enough.
        assert_eq!(synced(&push(&["git@github.com:acme/policies.git"])), [true, true, false, false, false]);
        assert_eq!(synced(&push(&["https://gitlab.example.com/acme/policies"])), [false, false, false, false, true]);
        // A payload naming no repository: every rollout on the pushed ref, as before.
        assert_eq!(synced(&push(&[])), [true, true, false, true, true]);
    }
}
