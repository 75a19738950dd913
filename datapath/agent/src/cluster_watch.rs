//! Watches of the cluster that turn Pods, Namespaces, Nodes, Services, the API server's
//! EndpointSlices, PolicyRevisions and PolicyRollouts into [`Change`]s for the agent (the
//! reports go back through `report_writer`). Local mode feeds the same agent without
//! any of this.
//!
//! Each watch remembers what it sent (resource versions, or the items of a whole-list kind), so a
//! watch that restarts with a fresh listing (its resource version expired while it was away)
//! deletes what vanished meanwhile and resends only what changed.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use palisade_policy::cluster;
use palisade_rollout::crd::{PolicyRevision, PolicyRollout, PolicyRolloutStatus};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Level, debug, info, warn};

use crate::input::Change;
use crate::slim_pod::SlimPod;

/// The watches [`watch`] runs; [`Change::Synced`] follows the initial listing of all of them.
const WATCHES: usize = 7;

/// Namespace (empty for cluster-scoped objects) and name.
type Key = (String, String);

/// What the watches share with the rest of the agent process.
#[derive(Debug, Default)]
pub struct WatchState {
    synced: AtomicBool,
    /// Initial listings still outstanding.
    pending: AtomicUsize,
    /// What the report writer needs of every PolicyRollout.
    rollouts: Mutex<HashMap<Key, RolloutFacts>>,
}

/// What the report writer needs of a PolicyRollout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolloutFacts {
    /// For the owner reference of its reports.
    pub uid: Option<String>,
    /// `spec.audit.minFlowsPerEndpoint`: the gate reads whether each endpoint reached it.
    pub min_flows_per_endpoint: u64,
    /// The end of the post-promotion window (`status.promotedAt` +
    /// `spec.rollback.postPromotionWindow`), while the controller watches drops for a rollback.
    pub watched_until: Option<Timestamp>,
    /// A candidate is staged or a flip requested: the controller's barrier waits on the nodes,
    /// and tells a silent node from a dead one by its heartbeat.
    pub in_flight: bool,
}

impl RolloutFacts {
    fn of(rollout: &PolicyRollout) -> RolloutFacts {
        let window = SignedDuration::try_from(std::time::Duration::from(rollout.spec.rollback.post_promotion_window))
            .unwrap_or(SignedDuration::MAX);
        let promoted_at = rollout.status.as_ref().and_then(|s| s.promoted_at.as_ref());
        RolloutFacts {
            uid: rollout.metadata.uid.clone(),
            min_flows_per_endpoint: u64::from(rollout.spec.audit.min_flows_per_endpoint),
            watched_until: promoted_at.map(|at| at.0.checked_add(window).unwrap_or(Timestamp::MAX)),
            in_flight: rollout.status.as_ref().is_some_and(PolicyRolloutStatus::in_flight),
        }
    }

    /// Whether the controller watches the rollout's drops at `now`.
    pub fn watched_at(&self, now: Timestamp) -> bool {
        self.watched_until.is_some_and(|until| now < until)
    }
}

impl WatchState {
    /// Whether [`Change::Synced`] was sent.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// What is known of a rollout; the defaults until it was seen.
    pub fn rollout(&self, namespace: &str, name: &str) -> RolloutFacts {
        self.rollouts().get(&(namespace.to_string(), name.to_string())).cloned().unwrap_or_default()
    }

    /// Namespace and name of every rollout the watch has seen and not seen go.
    pub fn rollouts_known(&self) -> Vec<(String, String)> {
        self.rollouts().keys().cloned().collect()
    }

    fn rollouts(&self) -> std::sync::MutexGuard<'_, HashMap<Key, RolloutFacts>> {
        self.rollouts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The agent stopped taking changes.
#[derive(Debug, thiserror::Error)]
#[error("the agent stopped taking changes")]
pub struct AgentStopped;

/// Watches everything the agent needs and sends it as changes, until the agent stops. Watch
/// errors are logged and retried with the watcher's default backoff.
pub async fn watch(client: Client, changes: mpsc::Sender<Change>, state: Arc<WatchState>) -> Result<(), AgentStopped> {
    state.pending.store(WATCHES, Ordering::SeqCst);
    let sink = Sink { changes, state };
    let sink = &sink;
    futures::try_join!(
        // Every node's pods, slim: identities and the ipcache need them all, nothing needs more.
        each(Api::<SlimPod>::all(client.clone()), sink, pod_change, |(namespace, name)| Change::PodDeleted {
            namespace,
            name
        }),
        each(Api::<Namespace>::all(client.clone()), sink, namespace_change, |(_, name)| {
            Change::NamespaceDeleted(name)
        }),
        each(
            Api::<PolicyRevision>::all(client.clone()),
            sink,
            |r| Ok(Change::Revision(Box::new(r))),
            |(namespace, name)| { Change::RevisionDeleted { namespace, name } }
        ),
        each(
            Api::<PolicyRollout>::all(client.clone()),
            sink,
            |r| Ok(Change::Rollout(Box::new(r))),
            |(namespace, name)| { Change::RolloutDeleted { namespace, name } }
        ),
        whole(Api::<Node>::all(client.clone()), everything(), sink, via_json(cluster::Node::from_json), Change::Nodes),
        whole(
            Api::<Service>::all(client.clone()),
            everything(),
            sink,
            via_json(cluster::Service::from_json),
            Change::Services
        ),
        // Only the slices no controller derives from a Service's selector (that would be every
        // pod again, on every node): the API server's and those of selector-less Services.
        whole(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default().labels(&format!(
                "{}!={}",
                cluster::MANAGED_BY_LABEL,
                cluster::MANAGED_BY_SELECTOR
            )),
            sink,
            via_json(cluster::EndpointSlice::from_json),
            Change::EndpointSlices
        ),
    )
    .map(|_| ())
}

fn to_json(object: &impl Serialize) -> Result<serde_json::Value, String> {
    serde_json::to_value(object).map_err(|e| e.to_string())
}

/// A conversion to the policy model's type through the object's JSON.
fn via_json<K: Serialize, T>(
    from_json: fn(&serde_json::Value) -> Result<T, String>,
) -> impl Fn(&K) -> Result<T, String> {
    move |object| from_json(&to_json(object)?)
}

/// Every object of the kind.
fn everything() -> watcher::Config {
    watcher::Config::default()
}

fn pod_change(pod: SlimPod) -> Result<Change, String> {
    cluster::Pod::from_json(&to_json(&pod)?).map(Change::Pod)
}

fn namespace_change(namespace: Namespace) -> Result<Change, String> {
    cluster::Namespace::from_json(&to_json(&namespace)?).map(Change::Namespace)
}

struct Sink {
    changes: mpsc::Sender<Change>,
    state: Arc<WatchState>,
}

impl Sink {
    fn send(&self, changes: Vec<Change>) -> Result<(), AgentStopped> {
        for change in changes {
            match &change {
                Change::Rollout(rollout) => {
                    self.state.rollouts().insert(key_of(rollout.as_ref()), RolloutFacts::of(rollout));
                }
                Change::RolloutDeleted { namespace, name } => {
                    self.state.rollouts().remove(&(namespace.clone(), name.clone()));
                }
                _ => {}
            }
            self.changes.send(change).map_err(|_| AgentStopped)?;
        }
        Ok(())
    }

    /// One watch finished its first listing; the last one sends [`Change::Synced`].
    fn listed(&self) -> Result<(), AgentStopped> {
        if self.state.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            info!("every watch has listed; the agent may program the datapath");
            self.state.synced.store(true, Ordering::SeqCst);
            self.changes.send(Change::Synced).map_err(|_| AgentStopped)?;
        }
        Ok(())
    }
}

fn key_of<K: Resource>(object: &K) -> Key {
    (object.meta().namespace.clone().unwrap_or_default(), object.meta().name.clone().unwrap_or_default())
}

/// Runs one watch, feeding its events to `handle` until the agent stops.
async fn run<K>(
    api: Api<K>,
    config: watcher::Config,
    sink: &Sink,
    mut handle: impl FnMut(Event<K>) -> Vec<Change>,
) -> Result<(), AgentStopped>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let kind = std::any::type_name::<K>().rsplit("::").next().unwrap_or_default().to_string();
    let mut events = watcher(api, config).boxed();
    let mut listed = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                // When a change reached the agent (the agent benchmark times from here); the
                // key is only copied out when the line is wanted.
                if let Event::Apply(object) | Event::Delete(object) = &event
                    && tracing::event_enabled!(Level::DEBUG)
                {
                    let meta = object.meta();
                    let (namespace, name) =
                        (meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default());
                    debug!(%kind, %namespace, %name, "watch event received");
                }
                let done = matches!(event, Event::InitDone);
                sink.send(handle(event))?;
                if done && !listed {
                    listed = true;
                    debug!(%kind, "initial listing done");
                    sink.listed()?;
                }
            }
            Err(e) => warn!(%kind, error = %e, "watch failed; retrying"),
        }
    }
    Ok(())
}

fn watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, config).default_backoff()
}

/// A kind sent object by object: upserts as they come, deletions, and after a relisting the
/// deletion of every object the listing no longer holds.
async fn each<K>(
    api: Api<K>,
    sink: &Sink,
    convert: impl Fn(K) -> Result<Change, String>,
    deleted: impl Fn(Key) -> Change,
) -> Result<(), AgentStopped>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut tracker = EachTracker::default();
    run(api, watcher::Config::default(), sink, |event| tracker.event(event, &convert, &deleted)).await
}

/// A kind sent as its whole list on every change (nodes, services and the API server's
/// EndpointSlices only feed the ipcache and `toServices`; they are few), of the objects `config`
/// selects.
async fn whole<K, T>(
    api: Api<K>,
    config: watcher::Config,
    sink: &Sink,
    convert: impl Fn(&K) -> Result<T, String>,
    list: impl Fn(Vec<T>) -> Change,
) -> Result<(), AgentStopped>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: Clone + PartialEq,
{
    let mut tracker = ListTracker::default();
    run(api, config, sink, |event| tracker.event(event, &convert, &list)).await
}

/// What a watch of an object-by-object kind sent: each object's resource version.
#[derive(Default)]
struct EachTracker {
    sent: BTreeMap<Key, String>,
    /// Objects seen since the watch (re)started listing.
    listing: Option<BTreeSet<Key>>,
}

impl EachTracker {
    fn event<K: Resource>(
        &mut self,
        event: Event<K>,
        convert: impl Fn(K) -> Result<Change, String>,
        deleted: impl Fn(Key) -> Change,
    ) -> Vec<Change> {
        let mut out = Vec::new();
        match event {
            Event::Init => self.listing = Some(BTreeSet::new()),
            Event::InitApply(object) | Event::Apply(object) => {
                let key = key_of(&object);
                let version = object.resource_version().unwrap_or_default();
                if self.sent.get(&key).is_some_and(|v| *v == version && !version.is_empty()) {
                    // Relisted unchanged.
                    if let Some(listing) = &mut self.listing {
                        listing.insert(key);
                    }
                    return out;
                }
                match convert(object) {
                    Ok(change) => {
                        out.push(change);
                        if let Some(listing) = &mut self.listing {
                            listing.insert(key.clone());
                        }
                        self.sent.insert(key, version);
                    }
                    Err(e) => {
                        warn!(object = %format!("{}/{}", key.0, key.1), "ignored: {e}");
                        if self.sent.remove(&key).is_some() {
                            out.push(deleted(key));
                        }
                    }
                }
            }
            Event::Delete(object) => {
                let key = key_of(&object);
                if self.sent.remove(&key).is_some() {
                    out.push(deleted(key));
                }
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let gone: Vec<Key> = self.sent.keys().filter(|k| !listed.contains(*k)).cloned().collect();
                for key in gone {
                    self.sent.remove(&key);
                    out.push(deleted(key));
                }
            }
        }
        out
    }
}

/// What a watch of a whole-list kind sent: the converted items.
struct ListTracker<T> {
    sent: BTreeMap<Key, T>,
    listing: Option<BTreeMap<Key, T>>,
    /// Whether the list was sent once (an empty list is news the first time).
    announced: bool,
}

impl<T> Default for ListTracker<T> {
    fn default() -> Self {
        ListTracker { sent: BTreeMap::new(), listing: None, announced: false }
    }
}

impl<T: Clone + PartialEq> ListTracker<T> {
    fn event<K: Resource>(
        &mut self,
        event: Event<K>,
        convert: impl Fn(&K) -> Result<T, String>,
        list: impl Fn(Vec<T>) -> Change,
    ) -> Vec<Change> {
        let changed = match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            Event::InitApply(object) => {
                let key = key_of(&object);
                match convert(&object) {
                    Ok(item) => {
                        self.listing.get_or_insert_default().insert(key, item);
                    }
                    Err(e) => warn!(object = %format!("{}/{}", key.0, key.1), "ignored: {e}"),
                }
                false
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let changed = listed != self.sent || !self.announced;
                self.sent = listed;
                changed
            }
            Event::Apply(object) => {
                let key = key_of(&object);
                match convert(&object) {
                    Ok(item) => self.sent.insert(key, item.clone()).is_none_or(|old| old != item),
                    Err(e) => {
                        warn!(object = %format!("{}/{}", key.0, key.1), "ignored: {e}");
                        self.sent.remove(&key).is_some()
                    }
                }
            }
            Event::Delete(object) => self.sent.remove(&key_of(&object)).is_some(),
        };
        if !changed {
            return Vec::new();
        }
        self.announced = true;
        vec![list(self.sent.values().cloned().collect())]
    }
}
