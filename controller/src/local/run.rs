//! `palisade local run`: the controller and the agent in one process, against the local cluster
//! (pods as network namespaces) and a state directory instead of the API server.
//!
//! The controller half is the Kubernetes reconciler's step ([`step::reconcile`]) over the state
//! directory ([`LocalStore`]) instead of the API server. The agent half is the node agent itself on
//! the real datapath, its thread inside the local node namespace.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use palisade_agent::runtime::{AgentHandle, RuntimeOptions, spawn};
use palisade_agent::{Agent, AgentConfig, Change, RouteResolver};
use palisade_datapath::Datapath;
use palisade_netsim::{Local, TrafficGenerator, TrafficOptions};
use palisade_policy::AllowLocalhost;
use palisade_policy::yaml::{self, Limits};
use palisade_rollout::crd::{
    PolicyAuditReport, PolicyAuditReportSpec, PolicyRevision, PolicyRollout, PolicyRolloutStatus,
};
use palisade_rollout::engine::{Claim, DecisionRequest, Event, NotReadyNode};
use palisade_rollout::wire::RECONCILE_ANNOTATION;
use tracing::{info, warn};

use super::store::{LocalEvent, Request, Store};
use crate::reconciler::step::{self, RolloutStore};
use crate::reconciler::{AllowedSources, Error, Metrics, Sources};

/// The namespace local mode's controller runs in: rollouts there may use `scope: Cluster`.
pub const CONTROLLER_NAMESPACE: &str = "palisade-system";
/// Local mode's one node, as reports name it.
pub const NODE: &str = "local";

pub struct RunOptions {
    pub state_dir: PathBuf,
    /// PolicyRollouts, with the Secrets they refer to, as multi-document YAML.
    pub rollout_files: Vec<PathBuf>,
    /// Where the datapath is pinned; it outlives the process, so a restart adopts it.
    pub pin_dir: PathBuf,
    pub report_interval: Duration,
    /// Make the connections pods declare in `palisade.dev/talks-to`.
    pub traffic: TrafficOptions,
    /// Whether the node namespace (the local host) reaches pods whatever their policy.
    pub allow_localhost: AllowLocalhost,
    /// Addresses learned for `toFQDNs` are kept at least this long.
    pub fqdn_min_ttl: Duration,
}

/// The rollouts and Secrets of the rollout files.
pub struct RolloutFiles {
    pub rollouts: Vec<PolicyRollout>,
    pub secrets: BTreeMap<(String, String), Secret>,
}

/// Reads PolicyRollouts and Secrets; anything else is an error naming the file and line.
pub fn read_rollout_files(paths: &[PathBuf]) -> Result<RolloutFiles> {
    let mut files = RolloutFiles { rollouts: Vec::new(), secrets: BTreeMap::new() };
    for path in paths {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let documents = yaml::parse_documents(&text, &Limits::default())
            .map_err(|e| anyhow::anyhow!("{}:{}: {}", path.display(), e.line, e.message))?;
        for document in documents {
            let line = document.line;
            let json = document.to_json();
            let kind = json.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_owned();
            let at = || format!("{}:{line}", path.display());
            match kind.as_str() {
                "PolicyRollout" => {
                    let mut rollout: PolicyRollout =
                        serde_json::from_value(json).with_context(|| format!("{}: PolicyRollout", at()))?;
                    rollout.metadata.namespace.get_or_insert_with(|| "default".into());
                    if rollout.metadata.name.is_none() {
                        bail!("{}: metadata.name: a PolicyRollout needs a name", at());
                    }
                    files.rollouts.push(rollout);
                }
                "Secret" => {
                    let secret: Secret = serde_json::from_value(json).with_context(|| format!("{}: Secret", at()))?;
                    let namespace = secret.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                    let name = secret.metadata.name.clone().with_context(|| format!("{}: metadata.name", at()))?;
                    files.secrets.insert((namespace, name), secret);
                }
                "" => bail!("{}: kind: missing (expected PolicyRollout or Secret)", at()),
                other => bail!("{}: kind: {other}: local mode reads PolicyRollouts and Secrets only", at()),
            }
        }
    }
    if files.rollouts.is_empty() {
        bail!("no PolicyRollout in {}", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    Ok(files)
}

/// Runs until `shutdown` resolves. Enforcement outlives it: the datapath stays pinned.
pub async fn run(local: Local, options: RunOptions, shutdown: impl Future<Output = ()>) -> Result<()> {
    let files = read_rollout_files(&options.rollout_files)?;
    let store = Store::new(&options.state_dir);
    let datapath = Datapath::open(&options.pin_dir)
        .with_context(|| format!("load the datapath pinned under {}", options.pin_dir.display()))?;
    // Every pod is local (no `node`), and the node namespace is the local node: its address is
    // `host`.
    let config = AgentConfig {
        host_node: Some(local.network.node().name.clone()),
        allow_localhost: options.allow_localhost,
        ..AgentConfig::default()
    };
    let agent = Agent::new(config, datapath, RouteResolver);
    let netns = Path::new("/run/netns").join(local.network.node_netns());
    let runtime = RuntimeOptions {
        netns: Some(netns),
        report_interval: options.report_interval,
        // The node namespace is local mode's own: its proxy and routes go with it.
        proxy_port: Some(0),
        fqdn_min_ttl: options.fqdn_min_ttl,
        fqdn_state: Some(options.state_dir.join("fqdn.json")),
        ..Default::default()
    };
    let AgentHandle { changes, mut reports, thread, flows } = spawn(agent, runtime).context("start the agent")?;
    // `palisade observe --local`; the socket goes when this returns.
    let _observe = palisade_agent::observe::UnixServer::start(flows, &options.state_dir.join("observe.sock"))
        .context("serve flows on the observe socket")?;
    let send = |change: Change| changes.send(change).map_err(|_| anyhow::anyhow!("the agent stopped"));

    for namespace in local.cluster.namespaces.values() {
        send(Change::Namespace(namespace.clone()))?;
    }
    for pod in &local.cluster.pods {
        send(Change::Pod(pod.clone()))?;
    }
    send(Change::Nodes(local.cluster_with_node().nodes))?;
    send(Change::Services(local.cluster.services.clone()))?;
    // The node's kube-proxy translates the same Services the agent is given (`up` made the
    // table; this rewrites it in one transaction, so it matches the cluster this run uses).
    palisade_netsim::kube_proxy::apply(local.network.node_netns(), &local.cluster)?;
    send(Change::EndpointSlices(local.cluster.endpoint_slices.clone()))?;
    // The spec comes from the files; status (and a suspend from the CLI) from the last run.
    let mut rollouts = Vec::new();
    for mut rollout in files.rollouts {
        let (namespace, name) = (namespace_of(&rollout), name_of(&rollout));
        if let Some(stored) = store.rollout(&namespace, &name)? {
            rollout.status = stored.status;
            rollout.spec.suspend |= stored.spec.suspend;
            rollout.metadata.annotations = stored.metadata.annotations;
        }
        rollout.metadata.creation_timestamp.get_or_insert_with(|| Time(Timestamp::now()));
        store.put_rollout(&rollout)?;
        for revision in store.revisions(&namespace)? {
            send(Change::Revision(Box::new(revision)))?;
        }
        send(Change::Rollout(Box::new(rollout.clone())))?;
        rollouts.push((namespace, name));
    }
    send(Change::Synced)?;
    let traffic = TrafficGenerator::start(&local, options.traffic)?;
    let node = local.network.node();
    info!(
        pods = local.network.pods().count(),
        rollouts = rollouts.len(),
        node = %node.name,
        node_address = %node.address,
        allow_localhost = %options.allow_localhost,
        "local mode running"
    );

    let controller = Controller {
        store: &store,
        changes: &changes,
        secrets: files.secrets,
        sources: Sources::new(options.state_dir.join("git"), AllowedSources::Any),
        metrics: Metrics::default(),
    };
    tokio::pin!(shutdown);
    let mut next = Duration::ZERO;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            batch = reports.recv() => {
                let Some(batch) = batch else { break };
                for report in batch {
                    store.put_report(&report)?;
                }
            }
            () = tokio::time::sleep(next) => {}
        }
        next = Duration::from_secs(1);
        for (namespace, name) in &rollouts {
            match controller.reconcile(namespace, name).await {
                Ok(after) => next = next.min(after),
                Err(e) => warn!(rollout = %format!("{namespace}/{name}"), "reconcile failed: {e:#}"),
            }
        }
    }
    traffic.stop();
    drop(changes);
    thread.join().map_err(|_| anyhow::anyhow!("the agent thread panicked"))??;
    info!("stopped; the datapath stays pinned and enforcing");
    Ok(())
}

struct Controller<'a> {
    store: &'a Store,
    changes: &'a Sender<Change>,
    /// The Secrets of the rollout files, by namespace and name.
    secrets: BTreeMap<(String, String), Secret>,
    sources: Sources,
    metrics: Metrics,
}

impl Controller<'_> {
    /// One reconcile of one rollout: the Kubernetes reconciler's step, on the state directory;
    /// returns when to come back at the latest.
    async fn reconcile(&self, namespace: &str, name: &str) -> Result<Duration> {
        let Some(mut rollout) = self.store.rollout(namespace, name)? else {
            bail!("rollout {namespace}/{name} is gone")
        };
        let now = Timestamp::now();
        self.take_requests(&mut rollout)?;
        let store = LocalStore { store: self.store, changes: self.changes, secrets: &self.secrets, now };
        let reconciled = step::reconcile(&store, &rollout, &self.sources, &self.metrics, now).await?;
        Ok(reconciled.requeue.max(Duration::from_millis(200)))
    }

    /// What the CLI asked for since the last reconcile, applied as its patches would be.
    fn take_requests(&self, rollout: &mut PolicyRollout) -> Result<()> {
        let (namespace, name) = (namespace_of(rollout), name_of(rollout));
        let requests = self.store.take_requests(&namespace, &name)?;
        if requests.is_empty() {
            return Ok(());
        }
        for request in requests {
            match request {
                Request::Suspend(suspend) => rollout.spec.suspend = suspend,
                Request::Reconcile(at) => {
                    let stamp = at.0.to_string();
                    rollout
                        .metadata
                        .annotations
                        .get_or_insert_with(BTreeMap::new)
                        .insert(RECONCILE_ANNOTATION.into(), stamp);
                }
            }
        }
        self.store.put_rollout(rollout)
    }
}

/// The state directory as the reconcile step's store; what it writes goes to the agent too,
/// as a watch would bring it from the API server.
struct LocalStore<'a> {
    store: &'a Store,
    changes: &'a Sender<Change>,
    secrets: &'a BTreeMap<(String, String), Secret>,
    /// The time of this reconcile, for what the API server would stamp.
    now: Timestamp,
}

impl LocalStore<'_> {
    fn send(&self, change: Change) -> Result<(), Error> {
        self.changes.send(change).map_err(|_| Error::Local(anyhow::anyhow!("the agent stopped")))
    }
}

impl RolloutStore for LocalStore<'_> {
    type Secrets = BTreeMap<String, Secret>;

    fn controller_namespace(&self) -> &str {
        CONTROLLER_NAMESPACE
    }

    fn secrets(&self, namespace: &str) -> BTreeMap<String, Secret> {
        self.secrets.iter().filter(|((ns, _), _)| ns == namespace).map(|((_, n), s)| (n.clone(), s.clone())).collect()
    }

    /// The one node's report; an empty one until its agent reports.
    async fn reports(&self, rollout: &PolicyRollout) -> Result<Vec<Arc<PolicyAuditReport>>, Error> {
        let (namespace, name) = (namespace_of(rollout), name_of(rollout));
        let mut reports: Vec<Arc<PolicyAuditReport>> =
            self.store.reports(&namespace, &name)?.into_iter().filter(|r| r.spec.node == NODE).map(Arc::new).collect();
        if reports.is_empty() {
            let spec = PolicyAuditReportSpec { rollout: name.clone(), node: NODE.into(), ..Default::default() };
            reports.push(Arc::new(PolicyAuditReport::new(&palisade_agent::report_name(&name, NODE), spec)));
        }
        Ok(reports)
    }

    /// The one node is this machine: Ready while local mode runs.
    async fn not_ready_nodes(&self) -> Result<Vec<NotReadyNode>, Error> {
        Ok(Vec::new())
    }

    async fn decisions(&self, rollout: &PolicyRollout) -> Result<Vec<DecisionRequest>, Error> {
        let decisions = self.store.decisions(&namespace_of(rollout), &name_of(rollout))?;
        Ok(decisions.iter().map(step::decision_request).collect())
    }

    async fn consume_decision(&self, rollout: &PolicyRollout, name: &str) -> Result<(), Error> {
        Ok(self.store.remove_decision(&namespace_of(rollout), name)?)
    }

    async fn claims(&self, rollout: &PolicyRollout) -> Result<Vec<Claim>, Error> {
        let mut claims = Vec::new();
        for other in self.store.rollouts()?.iter().filter(|o| o.metadata != rollout.metadata) {
            let revisions = self.store.revisions(&namespace_of(other))?;
            for held in step::held_revisions(other) {
                if let Some(revision) = revisions.iter().find(|r| r.metadata.name.as_deref() == Some(held.id.as_str()))
                {
                    claims.extend(step::claims_of(other, held, &revision.spec));
                }
            }
        }
        Ok(claims)
    }

    async fn create_revision(&self, mut revision: PolicyRevision) -> Result<(), Error> {
        revision.metadata.creation_timestamp = Some(Time(self.now));
        self.store.put_revision(&revision)?;
        let key = format!("{}/{}", revision.metadata.namespace.as_deref().unwrap_or_default(), revision.spec.rollout);
        let id = revision.metadata.name.clone().unwrap_or_default();
        self.send(Change::Revision(Box::new(revision)))?;
        info!(rollout = %key, revision = %id, "staged a PolicyRevision");
        Ok(())
    }

    async fn write_status(&self, rollout: &PolicyRollout, status: &PolicyRolloutStatus) -> Result<(), Error> {
        let mut rollout = rollout.clone();
        let old = rollout.status.replace(status.clone());
        self.store.put_rollout(&rollout)?;
        let key = format!("{}/{}", namespace_of(&rollout), name_of(&rollout));
        self.send(Change::Rollout(Box::new(rollout)))?;
        if old.as_ref().map(|s| s.phase) != Some(status.phase) {
            info!(rollout = %key, phase = ?status.phase, "phase");
        }
        Ok(())
    }

    async fn record_event(&self, rollout: &PolicyRollout, event: &Event) -> Result<(), Error> {
        let (namespace, name) = (namespace_of(rollout), name_of(rollout));
        info!(rollout = %format!("{namespace}/{name}"), reason = event.reason, "{}", event.message);
        self.store.append_event(&LocalEvent {
            time: Time(self.now),
            type_: event.kind.as_str().into(),
            reason: event.reason.into(),
            namespace,
            rollout: name,
            message: event.message.clone(),
        })?;
        Ok(())
    }
}

fn namespace_of(rollout: &PolicyRollout) -> String {
    rollout.metadata.namespace.clone().unwrap_or_else(|| "default".into())
}

fn name_of(rollout: &PolicyRollout) -> String {
    rollout.metadata.name.clone().unwrap_or_default()
}
