//! The kinds `palisade get` lists: PolicyRollouts, PolicyRevisions and PolicyAuditReports, each
//! with the columns `-o wide` adds to its CRD's printer columns, and where local mode keeps it.
use std::fmt::Debug;

use anyhow::Result;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::jiff::Timestamp;
use kube::{CustomResourceExt, Resource};
use palisade_rollout::crd::{PolicyAuditReport, PolicyRevision, PolicyRollout};
use palisade_rollout::engine::COND_READY;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{condition, source_ref};
use crate::cmd::cluster::age;
use crate::local::store::Store;

pub(super) trait Listed:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + CustomResourceExt
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// How an error names one: `rollout web exists in several namespaces`.
    const SHORT: &'static str;
    /// The columns `-o wide` adds after the printer columns.
    const WIDE: &'static [&'static str];

    fn wide(&self, now: Timestamp) -> Vec<String>;

    /// Local mode's objects in `namespace`, or in every namespace.
    fn local(store: &Store, namespace: Option<&str>) -> Result<Vec<Self>>;

    /// As kubectl names the resource: `policyrollouts.palisade.dev`.
    fn resource() -> String {
        format!("{}.{}", Self::plural(&()), Self::group(&()))
    }
}

impl Listed for PolicyRollout {
    const SHORT: &'static str = "rollout";
    const WIDE: &'static [&'static str] = &["PROMOTION", "REF", "MESSAGE"];

    fn wide(&self, _now: Timestamp) -> Vec<String> {
        let status = self.status.clone().unwrap_or_default();
        vec![
            format!("{:?}", self.spec.promotion),
            source_ref(self),
            condition(&status, COND_READY).map(|c| c.message.clone()).unwrap_or_default(),
        ]
    }

    fn local(store: &Store, namespace: Option<&str>) -> Result<Vec<Self>> {
        let mut rollouts = store.rollouts()?;
        if let Some(namespace) = namespace {
            rollouts.retain(|r| r.metadata.namespace.as_deref() == Some(namespace));
        }
        Ok(rollouts)
    }
}

impl Listed for PolicyRevision {
    const SHORT: &'static str = "revision";
    const WIDE: &'static [&'static str] = &["COMMIT", "DIGEST"];

    fn wide(&self, _now: Timestamp) -> Vec<String> {
        vec![self.spec.commit.clone(), self.spec.digest.clone()]
    }

    fn local(store: &Store, namespace: Option<&str>) -> Result<Vec<Self>> {
        store.all_revisions(namespace)
    }
}

impl Listed for PolicyAuditReport {
    const SHORT: &'static str = "report";
    const WIDE: &'static [&'static str] = &["OBSERVED", "NEW-ALLOWS", "DROPS/MIN", "EVIDENCE", "LOADED"];

    fn wide(&self, now: Timestamp) -> Vec<String> {
        let spec = &self.spec;
        vec![
            spec.totals.observed_flows.to_string(),
            spec.totals.new_allows.to_string(),
            spec.totals.drops_per_minute.to_string(),
            spec.audit_started_at.as_ref().map_or_else(String::new, |t| age(now, t.0)),
            spec.loaded_revisions.join(","),
        ]
    }

    fn local(store: &Store, namespace: Option<&str>) -> Result<Vec<Self>> {
        store.all_reports(namespace)
    }
}
