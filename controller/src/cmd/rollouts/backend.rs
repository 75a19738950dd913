//! Where the rollout commands read rollouts and write changes: the API server, or local mode's
//! state directory.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Resource, ResourceExt};
use palisade_netsim::DEFAULT_STATE_DIR;
use palisade_rollout::crd::{DecisionAction, PolicyAuditReport, PolicyDecision, PolicyDecisionSpec, PolicyRollout};
use palisade_rollout::wire::{CLI_FIELD_MANAGER, RECONCILE_ANNOTATION, ROLLOUT_LABEL};
use serde_json::{Value as Json, json};

use super::describe::EventRow;
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

    pub(super) async fn list(&self, all_namespaces: bool) -> Result<Vec<PolicyRollout>> {
        match self {
            Backend::Cluster(session) if all_namespaces => {
                Ok(Api::<PolicyRollout>::all(session.client.clone()).list(&ListParams::default()).await?.items)
            }
            Backend::Cluster(session) => Ok(api(session).list(&ListParams::default()).await?.items),
            Backend::Local(local) => {
                let mut rollouts = local.store()?.rollouts()?;
                if let Some(namespace) = local.namespace.as_deref().filter(|_| !all_namespaces) {
                    rollouts.retain(|r| r.metadata.namespace.as_deref() == Some(namespace));
                }
                Ok(rollouts)
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
