//! Where the rollout commands read rollouts and write changes: the API server, or local mode's
//! state directory.
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Resource, ResourceExt};
use palisade_netsim::DEFAULT_STATE_DIR;
use palisade_rollout::crd::{DecisionAction, PolicyAuditReport, PolicyDecision, PolicyDecisionSpec, PolicyRollout};
use palisade_rollout::wire::{CLI_FIELD_MANAGER, RECONCILE_ANNOTATION, ROLLOUT_LABEL};
use serde_json::{Value as Json, json};

use super::describe::EventRow;
use super::kinds::Listed;
use super::labels::Selector;
use super::{RESOURCE, Target};
use crate::cmd::cluster::{Session, not_found};
use crate::local::store::{Request, Store};

/// Where rollouts are read and changes written.
pub enum Backend {
    /// The API server.
    Cluster(Session),
    /// Local mode's store, where the running `palisade local run` picks requests up.
    Local(LocalState),
}

/// Local mode's store as the CLI sees it.
pub struct LocalState {
    pub state_dir: PathBuf,
    pub store: Store,
    /// `--namespace`; every namespace when unset.
    pub namespace: Option<String>,
    /// Who approves or aborts: `$SUDO_USER`, `$USER` or `local`.
    pub user: String,
    pub now: Timestamp,
}

impl LocalState {
    pub fn new(state_dir: &Path, namespace: Option<String>) -> LocalState {
        let user = ["SUDO_USER", "USER"]
            .into_iter()
            .find_map(|var| std::env::var(var).ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "local".into());
        LocalState {
            state_dir: state_dir.to_owned(),
            store: Store::new(state_dir),
            namespace,
            user,
            now: Timestamp::now(),
        }
    }

    /// The store, once it is known to exist: a command on a state directory that local mode
    /// never ran in says so instead of showing an empty list.
    fn store(&self) -> Result<&Store> {
        if !self.store.dir().is_dir() {
            bail!(
                "no local mode state in {}: start `palisade local run` (or give the --state it uses)",
                self.state_dir.display()
            );
        }
        Ok(&self.store)
    }
}

impl Backend {
    pub async fn connect(target: &Target) -> Result<Backend> {
        if target.local {
            let state = target.state.clone().unwrap_or_else(|| DEFAULT_STATE_DIR.into());
            return Ok(Backend::Local(LocalState::new(&state, target.cluster.namespace.clone())));
        }
        Ok(Backend::Cluster(Session::connect(&target.cluster).await?))
    }

    pub(super) fn now(&self) -> Timestamp {
        match self {
            Backend::Cluster(session) => session.now,
            Backend::Local(local) => local.now,
        }
    }

    /// Who is deciding: the user the API server authenticates (what the admission policy
    /// compares a PolicyDecision's `spec.user` with), or local mode's user.
    pub(super) async fn user(&self) -> Result<String> {
        match self {
            Backend::Cluster(session) => session.whoami().await,
            Backend::Local(local) => Ok(local.user.clone()),
        }
    }

    /// Creates a PolicyDecision about `revision` of `rollout`; returns its name.
    pub(super) async fn decide(
        &self,
        rollout: &PolicyRollout,
        action: DecisionAction,
        revision: &str,
        user: &str,
    ) -> Result<String> {
        let (namespace, name) = (rollout.namespace().unwrap_or_default(), rollout.name_any());
        let prefix = format!("{name}-{}-", format!("{action:?}").to_lowercase());
        let mut decision = PolicyDecision {
            metadata: ObjectMeta {
                namespace: Some(namespace.clone()),
                labels: Some([(ROLLOUT_LABEL.to_string(), name.clone())].into()),
                owner_references: rollout.owner_ref(&()).map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec: PolicyDecisionSpec { rollout: name, revision: revision.into(), action, user: user.into() },
        };
        match self {
            Backend::Local(local) => {
                let stamp = local.now.as_nanosecond();
                decision.metadata.name = Some(format!("{prefix}{stamp}"));
                decision.metadata.creation_timestamp = Some(Time(local.now));
                local.store()?.put_decision(&decision)?;
                Ok(decision.name_any())
            }
            Backend::Cluster(session) => {
                decision.metadata.generate_name = Some(prefix);
                let api = Api::<PolicyDecision>::namespaced(session.client.clone(), &namespace);
                let created = api.create(&PostParams::default(), &decision).await.map_err(|e| match e {
                    kube::Error::Api(s) if s.code == 403 => anyhow!(
                        "{}\n(needs `create` on policydecisions in namespace {namespace}: the palisade-approver ClusterRole grants it)",
                        s.message
                    ),
                    e => e.into(),
                })?;
                Ok(created.name_any())
            }
        }
    }

    /// The namespace commands act in; None for every namespace (local mode without --namespace).
    pub(super) fn namespace(&self) -> Option<&str> {
        match self {
            Backend::Cluster(session) => Some(&session.namespace),
            Backend::Local(local) => local.namespace.as_deref(),
        }
    }

    /// The objects of a kind in the namespace (every namespace with `all_namespaces`, or in local
    /// mode without --namespace) that `selector` selects, by namespace and name.
    pub(super) async fn list_of<K: Listed>(&self, all_namespaces: bool, selector: Option<&str>) -> Result<Vec<K>> {
        match self {
            Backend::Cluster(session) => {
                let params = match selector {
                    Some(selector) => ListParams::default().labels(selector),
                    None => ListParams::default(),
                };
                let api = if all_namespaces { Api::all(session.client.clone()) } else { api_of(session) };
                Ok(api.list(&params).await?.items)
            }
            Backend::Local(local) => {
                let selector = selector.map(Selector::parse).transpose()?;
                let namespace = local.namespace.as_deref().filter(|_| !all_namespaces);
                let mut objects: Vec<K> = K::local(local.store()?, namespace)?;
                if let Some(selector) = &selector {
                    objects.retain(|o| selector.matches(o.meta().labels.as_ref().unwrap_or(&Default::default())));
                }
                objects.sort_by(|a, b| {
                    (a.meta().namespace.as_ref(), &a.meta().name).cmp(&(b.meta().namespace.as_ref(), &b.meta().name))
                });
                Ok(objects)
            }
        }
    }

    /// One object of a kind by name; in local mode without --namespace, in whichever namespace has it.
    pub(super) async fn get_of<K: Listed>(&self, name: &str) -> Result<K> {
        match self {
            Backend::Cluster(session) => {
                api_of::<K>(session).get(name).await.map_err(|e| not_found(e, &K::resource(), name, &session.namespace))
            }
            Backend::Local(local) => {
                let mut found = K::local(local.store()?, local.namespace.as_deref())?;
                found.retain(|o| o.meta().name.as_deref() == Some(name));
                if found.len() > 1 {
                    bail!("{} {name} exists in several namespaces: say which with --namespace", K::SHORT);
                }
                found.pop().ok_or_else(|| match &local.namespace {
                    Some(namespace) => anyhow!("{} \"{name}\" not found in namespace \"{namespace}\"", K::resource()),
                    None => {
                        anyhow!("{} \"{name}\" not found in local mode ({})", K::resource(), local.state_dir.display())
                    }
                })
            }
        }
    }

    pub(super) async fn rollout(&self, name: &str) -> Result<PolicyRollout> {
        match self {
            Backend::Cluster(session) => {
                api(session).get(name).await.map_err(|e| not_found(e, RESOURCE, name, &session.namespace))
            }
            Backend::Local(local) => {
                local.store()?.find_rollout(local.namespace.as_deref(), name)?.ok_or_else(|| match &local.namespace {
                    Some(namespace) => anyhow!("{RESOURCE} \"{name}\" not found in namespace \"{namespace}\""),
                    None => anyhow!("{RESOURCE} \"{name}\" not found in local mode ({})", local.state_dir.display()),
                })
            }
        }
    }

    pub(super) async fn reports(&self, rollout: &PolicyRollout) -> Result<Vec<PolicyAuditReport>> {
        let (namespace, name) = (rollout.namespace().unwrap_or_default(), rollout.name_any());
        match self {
            Backend::Cluster(session) => Ok(Api::<PolicyAuditReport>::namespaced(session.client.clone(), &namespace)
                .list(&ListParams::default())
                .await
                .context("listing PolicyAuditReports")?
                .items
                .into_iter()
                .filter(|r| r.spec.rollout == name)
                .collect()),
            Backend::Local(local) => local.store()?.reports(&namespace, &name),
        }
    }

    /// The rollout's Events, oldest first; None when they cannot be listed (kubectl describe
    /// leaves them out then too).
    pub(super) async fn events(&self, rollout: &PolicyRollout) -> Option<Vec<EventRow>> {
        let (namespace, name) = (rollout.namespace().unwrap_or_default(), rollout.name_any());
        let mut rows: Vec<EventRow> = match self {
            Backend::Cluster(session) => {
                let kind = PolicyRollout::kind(&());
                let mut fields = format!("involvedObject.kind={kind},involvedObject.name={name}");
                if let Some(uid) = &rollout.metadata.uid {
                    fields.push_str(&format!(",involvedObject.uid={uid}"));
                }
                let events = Api::<CoreEvent>::namespaced(session.client.clone(), &namespace)
                    .list(&ListParams::default().fields(&fields))
                    .await
                    .ok()?;
                let about = |e: &CoreEvent| {
                    e.involved_object.name.as_deref() == Some(&name) && e.involved_object.kind.as_deref() == Some(&kind)
                };
                events.items.iter().filter(|e| about(e)).filter_map(EventRow::from_core).collect()
            }
            Backend::Local(local) => {
                local.store().ok()?.events(&namespace, &name).ok()?.iter().map(EventRow::from_local).collect()
            }
        };
        rows.sort_by_key(|e| e.last);
        Some(rows)
    }

    /// Makes the change `request` describes, as the controller expects it.
    pub(super) async fn write(&self, rollout: &PolicyRollout, request: Request) -> Result<()> {
        let name = rollout.name_any();
        let session = match self {
            Backend::Local(local) => {
                let namespace = rollout.namespace().unwrap_or_default();
                return local.store()?.push_request(&namespace, &name, &request);
            }
            Backend::Cluster(session) => session,
        };
        match request {
            Request::Suspend(suspend) => merge_patch(session, &name, json!({"spec": {"suspend": suspend}})).await,
            Request::Reconcile(at) => {
                let at = at.0.to_string();
                merge_patch(session, &name, json!({"metadata": {"annotations": {RECONCILE_ANNOTATION: at}}})).await
            }
        }
    }
}

fn api(session: &Session) -> Api<PolicyRollout> {
    api_of(session)
}

fn api_of<K: Listed>(session: &Session) -> Api<K> {
    Api::namespaced(session.client.clone(), &session.namespace)
}

async fn merge_patch(session: &Session, name: &str, patch: Json) -> Result<()> {
    let params = PatchParams { field_manager: Some(CLI_FIELD_MANAGER.into()), ..PatchParams::default() };
    api(session)
        .patch(name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| not_found(e, RESOURCE, name, &session.namespace))?;
    Ok(())
}

/// What a watch saw happen to one object.
pub(super) enum Change<K> {
    /// Created or changed.
    Applied(K),
    Deleted(K),
}

/// `namespace/name` of an object, for telling objects apart across namespaces.
type Key = (String, String);

fn key_of<K: Listed>(object: &K) -> Key {
    (object.meta().namespace.clone().unwrap_or_default(), object.meta().name.clone().unwrap_or_default())
}

/// The changes to the objects a list returned, from that list on: a watch from the list's
/// resourceVersion for a cluster (listing again when the server has forgotten it, and telling
/// only what changed meanwhile), or local mode's store read again every `interval`.
pub(super) struct Watch<K: Listed> {
    /// The objects as last seen.
    known: BTreeMap<Key, K>,
    pending: VecDeque<Change<K>>,
    source: WatchSource<K>,
}

enum WatchSource<K> {
    Cluster(Box<ClusterWatch<K>>),
    Local(LocalWatch),
}

/// A watch of the API server, from the resourceVersion of a list.
struct ClusterWatch<K> {
    api: Api<K>,
    list: ListParams,
    watch: WatchParams,
    version: String,
    events: Option<BoxStream<'static, kube::Result<WatchEvent<K>>>>,
}

/// A watch of local mode's store: what it reads again, and how often.
struct LocalWatch {
    store: Store,
    namespace: Option<String>,
    selector: Option<Selector>,
    name: Option<String>,
    interval: Duration,
}

/// What to list and then watch.
pub(super) struct Query<'a> {
    pub name: Option<&'a str>,
    pub all_namespaces: bool,
    pub selector: Option<&'a str>,
}

/// How often a watch of local mode reads its store again.
pub const LOCAL_POLL: Duration = Duration::from_millis(500);

impl Backend {
    /// The objects a query selects, and the watch of their changes from then on. A name that
    /// is not there is an error, as for a get.
    pub(super) async fn list_and_watch<K: Listed>(&self, query: &Query<'_>) -> Result<(Vec<K>, Watch<K>)> {
        let (objects, source) = match self {
            Backend::Cluster(session) => {
                let api = if query.all_namespaces { Api::all(session.client.clone()) } else { api_of(session) };
                let (mut list, mut watch) = (ListParams::default(), WatchParams::default());
                if let Some(selector) = query.selector {
                    (list, watch) = (list.labels(selector), watch.labels(selector));
                }
                if let Some(name) = query.name {
                    let field = format!("metadata.name={name}");
                    (list, watch) = (list.fields(&field), watch.fields(&field));
                }
                let listed = api.list(&list).await?;
                if let Some(name) = query.name.filter(|_| listed.items.is_empty()) {
                    // kubectl's error for a missing object.
                    self.get_of::<K>(name).await?;
                }
                let version = listed.metadata.resource_version.clone().unwrap_or_default();
                (listed.items, WatchSource::Cluster(Box::new(ClusterWatch { api, list, watch, version, events: None })))
            }
            Backend::Local(local) => {
                let objects = match query.name {
                    Some(name) => vec![self.get_of::<K>(name).await?],
                    None => self.list_of::<K>(query.all_namespaces, query.selector).await?,
                };
                let source = WatchSource::Local(LocalWatch {
                    store: local.store.clone(),
                    namespace: local.namespace.clone().filter(|_| !query.all_namespaces),
                    selector: query.selector.map(Selector::parse).transpose()?,
                    name: query.name.map(String::from),
                    interval: LOCAL_POLL,
                });
                (objects, source)
            }
        };
        let known = objects.iter().map(|o| (key_of(o), o.clone())).collect();
        Ok((objects, Watch { known, pending: VecDeque::new(), source }))
    }
}

impl<K: Listed> Watch<K> {
    /// The next change; waits for one.
    pub async fn next(&mut self) -> Result<Change<K>> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Ok(change);
            }
            match &mut self.source {
                WatchSource::Cluster(cluster) => {
                    let ClusterWatch { api, list, watch, version, events } = cluster.as_mut();
                    let stream = match events {
                        Some(stream) => stream,
                        None => events.insert(api.watch(watch, version).await?.boxed()),
                    };
                    let Some(event) = stream.next().await else {
                        // The server ended the watch (its timeout): go on from where it was.
                        *events = None;
                        continue;
                    };
                    match event? {
                        WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                            *version = object.resource_version().unwrap_or_default();
                            self.known.insert(key_of(&object), object.clone());
                            return Ok(Change::Applied(object));
                        }
                        WatchEvent::Deleted(object) => {
                            *version = object.resource_version().unwrap_or_default();
                            self.known.remove(&key_of(&object));
                            return Ok(Change::Deleted(object));
                        }
                        WatchEvent::Bookmark(bookmark) => *version = bookmark.metadata.resource_version,
                        WatchEvent::Error(status) if status.code == 410 => {
                            // Too old a resourceVersion: list again, and tell what changed meanwhile.
                            *events = None;
                            let listed = api.list(list).await?;
                            *version = listed.metadata.resource_version.clone().unwrap_or_default();
                            let fresh = listed.items.into_iter().map(|o| (key_of(&o), o)).collect();
                            self.changes_to(fresh, |a, b| a.resource_version() == b.resource_version());
                        }
                        WatchEvent::Error(status) => return Err(kube::Error::Api(status).into()),
                    }
                }
                WatchSource::Local(local) => {
                    let LocalWatch { store, namespace, selector, name, interval } = &*local;
                    tokio::time::sleep(*interval).await;
                    let mut objects = K::local(store, namespace.as_deref())?;
                    objects.retain(|o| {
                        let labels = o.meta().labels.clone().unwrap_or_default();
                        selector.as_ref().is_none_or(|s| s.matches(&labels))
                            && name.as_ref().is_none_or(|n| o.meta().name.as_ref() == Some(n))
                    });
                    let fresh = objects.into_iter().map(|o| (key_of(&o), o)).collect();
                    self.changes_to(fresh, |a, b| serde_json::to_value(a).ok() == serde_json::to_value(b).ok());
                }
            }
        }
    }

    /// Queues what differs between the known objects and `fresh`, which become the known ones.
    fn changes_to(&mut self, fresh: BTreeMap<Key, K>, same: impl Fn(&K, &K) -> bool) {
        for (key, object) in &fresh {
            if self.known.get(key).is_none_or(|known| !same(known, object)) {
                self.pending.push_back(Change::Applied(object.clone()));
            }
        }
        let known = std::mem::replace(&mut self.known, fresh);
        for (key, object) in known {
            if !self.known.contains_key(&key) {
                self.pending.push_back(Change::Deleted(object));
            }
        }
    }
}
