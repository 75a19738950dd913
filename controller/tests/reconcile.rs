//! The reconciler against an in-memory API server (`palisade_fake_apiserver`), with real Git repositories made by
//! the git CLI as the source. Node agents are played by the tests: their Pods and
//! PolicyAuditReports are objects in the fake store.
#[path = "../source/tests/common/mod.rs"]
mod git;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use palisade::reconciler::{
    AllowedSources, Caches, Config, Context, Metrics, OpenMetrics, REPORT_WINDOW, Triggers, control, reconcile,
};
use palisade_fake_apiserver::FakeApi;
use palisade_fake_apiserver::collections::{
    DECISIONS, EVENTS, NODES as NODE_OBJECTS, PODS, REPORTS, REVISIONS, ROLLOUTS,
};
use palisade_rollout::crd::*;
use serde_json::{Value, json};

const NS: &str = "shop";
const CONTROLLER_NS: &str = "palisade-system";
const NODES: [&str; 2] = ["node-a", "node-b"];

struct Harness {
    api: FakeApi,
    ctx: Arc<Context>,
    now: Arc<Mutex<Timestamp>>,
    repo: git::Repo,
    namespace: String,
    dir: tempfile::TempDir,
    /// The controller's `--allow-insecure-sources`: on, since the test repositories are file://.
    allowed_sources: AllowedSources,
    /// The running controller's Git cache.
    cache: std::path::PathBuf,
}

impl Harness {
    /// Rollout `web` in `namespace` on a repository whose first commit allows port 8080, with
    /// agents on two nodes. `spec` is merged over the rollout's spec.
    fn new(namespace: &str, spec: Value) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let repo = git::Repo::new(dir.path());
        repo.write("policies/web.yaml", &git::namespaced_policy(NS, "web", 8080));
        repo.commit("allow 8080", &[]);
        let api = FakeApi::default();
        for node in NODES {
            api.put(
                PODS,
                json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("agent-{node}"), "namespace": CONTROLLER_NS,
                                 "labels": {"app.kubernetes.io/name": "palisade-agent"}},
                    "spec": {"nodeName": node, "containers": []},
                    "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            );
        }
        let mut rollout = json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyRollout",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {"source": {"url": repo.url(), "ref": {"branch": "main"}, "path": "policies", "interval": "1m"},
                     "audit": {"minDuration": "10m", "minFlowsPerEndpoint": 1, "maxNewDenies": 0},
                     "rollback": {"postPromotionWindow": "10m", "maxDropIncrease": 100}}});
        json_patch::merge(&mut rollout["spec"], &spec);
        api.put(ROLLOUTS, rollout);
        let now = Arc::new(Mutex::new(Timestamp::from_second(1_800_000_000).unwrap()));
        let allowed_sources = AllowedSources::Any;
        let mut harness = Harness {
            ctx: context_for(&api, &now, dir.path(), allowed_sources).0,
            api,
            now,
            repo,
            namespace: namespace.into(),
            cache: dir.path().into(),
            dir,
            allowed_sources,
        };
        harness.restart();
        harness
    }

    /// A new controller process: nothing in memory, a fresh Git cache.
    fn restart(&mut self) {
        self.cache = tempfile::tempdir_in(self.dir.path()).unwrap().keep();
        self.ctx = context_for(&self.api, &self.now, &self.cache, self.allowed_sources).0;
    }

    /// Restarts the controller with `--allow-insecure-sources` on (`Any`) or off (`Secure`).
    fn restart_allowing(&mut self, allowed: AllowedSources) {
        self.allowed_sources = allowed;
        self.restart();
    }

    /// The agent Pod of `node` passes or fails its readiness probe.
    fn set_agent_ready(&self, node: &str, ready: bool) {
        let status = if ready { "True" } else { "False" };
        self.api.update(PODS, CONTROLLER_NS, &format!("agent-{node}"), |pod| {
            pod["status"]["conditions"] = json!([{"type": "Ready", "status": status}]);
        });
    }

    /// Waits for the controller's caches to hold what the API server holds, as they do soon
    /// after every change.
    async fn settle(&self) {
        fn same<K: kube::Resource>(cached: Vec<Arc<K>>, served: Vec<Value>) -> bool {
            let cached: std::collections::BTreeSet<(Option<String>, String, Option<String>)> =
                cached.iter().map(|o| (o.namespace(), o.name_any(), o.resource_version())).collect();
            let served = served.iter().map(|o| {
                let field = |f: &str| o["metadata"][f].as_str().map(String::from);
                (field("namespace"), field("name").unwrap_or_default(), field("resourceVersion"))
            });
            cached == served.collect()
        }
        let caches = &self.ctx.caches;
        for _ in 0..5000 {
            if same(caches.reports.all(), self.api.all(REPORTS))
                && same(caches.revisions.state(), self.api.all(REVISIONS))
                && same(caches.decisions.state(), self.api.all(DECISIONS))
                && same(caches.agents.state(), self.api.all(PODS))
                && same(caches.nodes.state(), self.api.all(NODE_OBJECTS))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the caches did not catch up with the API server");
    }

    /// The Node object of `node` turns Ready or NotReady now.
    fn set_node_ready(&self, node: &str, ready: bool) {
        let status = if ready { "True" } else { "False" };
        let since = self.now.lock().unwrap().to_string();
        self.api.put(
            NODE_OBJECTS,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
                "status": {"conditions": [{"type": "Ready", "status": status, "lastTransitionTime": since}]}}),
        );
    }

    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap()
    }

    /// One reconcile as the Controller would run it on the object in the store (twice the first
    /// time: adding the finalizer is a reconcile of its own), once its caches have caught up.
    async fn reconcile(&self) -> Action {
        loop {
            self.settle().await;
            let rollout = self.rollout();
            let had_finalizer = rollout.metadata.finalizers.as_ref().is_some_and(|f| !f.is_empty());
            let action = reconcile(Arc::new(rollout), self.ctx.clone()).await.expect("reconcile");
            if had_finalizer {
                return action;
            }
        }
    }

    fn rollout(&self) -> PolicyRollout {
        serde_json::from_value(self.api.get(ROLLOUTS, &self.namespace, "web").expect("the rollout")).unwrap()
    }

    fn status(&self) -> PolicyRolloutStatus {
        self.rollout().status.unwrap_or_default()
    }

    fn candidate(&self) -> String {
        self.status().candidate_revision.expect("a candidate").id
    }

    fn enforced(&self) -> Option<String> {
        self.status().enforced_revision.map(|r| r.id)
    }

    fn advance(&self, minutes: i64) {
        let mut now = self.now.lock().unwrap();
        *now += SignedDuration::from_mins(minutes);
    }

    /// A rollout with its first commit promoted and enforced everywhere, and that revision.
    async fn enforcing() -> (Harness, String) {
        let h = Harness::new(NS, json!({}));
        h.reconcile().await;
        let enforced = h.promote_candidate().await;
        (h, enforced)
    }

    /// A new commit allowing `port`, fetched two minutes later.
    async fn push(&self, port: u16) {
        self.commit(port, &format!("move to {port}"));
        self.advance(2);
        self.reconcile().await;
    }

    fn commit(&self, port: u16, message: &str) -> String {
        self.repo.write("policies/web.yaml", &git::namespaced_policy(NS, "web", port));
        self.repo.commit(message, &[])
    }

    /// Every node writes its report; `change` fills it in.
    fn report(&self, change: impl Fn(&mut PolicyAuditReportSpec)) {
        for node in NODES {
            let name = format!("web-{node}");
            let mut spec = self
                .api
                .get(REPORTS, &self.namespace, &name)
                .map(|r| serde_json::from_value::<PolicyAuditReport>(r).unwrap().spec)
                .unwrap_or(PolicyAuditReportSpec { rollout: "web".into(), node: node.into(), ..Default::default() });
            change(&mut spec);
            let object = json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyAuditReport",
                "metadata": {"name": name, "namespace": self.namespace, "labels": {"palisade.dev/rollout": "web"}},
                "spec": spec});
            match self.api.get(REPORTS, &self.namespace, &name) {
                Some(_) => self.api.update(REPORTS, &self.namespace, &name, |r| r["spec"] = object["spec"].clone()),
                None => self.api.put(REPORTS, object),
            }
        }
    }

    /// Every node loads `ids` and audits the candidate: 10 flows on one endpoint, `denies` new.
    fn audit(&self, ids: &[String], denies: Vec<AuditFlow>) {
        let candidate = self.candidate();
        let generation = self.status().audit_generation;
        self.report(|r| {
            r.audit_generation = generation;
            r.loaded_revisions = ids.to_vec();
            r.candidate_revision = Some(candidate.clone());
            r.totals = AuditTotals { observed_flows: 10, new_denies: denies.len() as u64, ..Default::default() };
            r.endpoints = vec![EndpointTraffic {
                namespace: NS.into(),
                pod: format!("web-{}", r.node),
                workload: Some("web".into()),
                flows: 10,
            }];
            r.flows = denies.clone();
        });
    }

    fn enforce(&self, id: &str) {
        self.report(|r| r.enforced_revision = Some(id.into()));
    }

    /// Audits the candidate cleanly, lets the audit run out and confirms the flip on every node.
    async fn promote_candidate(&self) -> String {
        let candidate = self.candidate();
        let loaded: Vec<String> = self.enforced().into_iter().chain([candidate.clone()]).collect();
        self.audit(&loaded, vec![]);
        self.advance(11);
        self.reconcile().await;
        assert_eq!(self.status().phase, Phase::Promoting);
        assert_eq!(self.enforced().as_deref(), Some(candidate.as_str()), "the flip was asked for");
        self.enforce(&candidate);
        self.reconcile().await;
        assert_eq!(self.status().phase, Phase::Enforced);
        candidate
    }

    fn revisions(&self) -> Vec<PolicyRevision> {
        self.api.list(REVISIONS, &self.namespace).into_iter().map(|r| serde_json::from_value(r).unwrap()).collect()
    }

    /// Reasons of the Events recorded, oldest first.
    fn events(&self) -> Vec<String> {
        self.api.list(EVENTS, &self.namespace).iter().map(|e| e["reason"].as_str().unwrap().to_string()).collect()
    }

    fn condition(&self, type_: &str) -> Option<(String, String, String)> {
        self.status().conditions.into_iter().find(|c| c.type_ == type_).map(|c| (c.status, c.reason, c.message))
    }
}

/// A controller's context, and the reconcile requests its caches make (for a Controller; the
/// harness runs reconciles itself).
fn context_for(
    api: &FakeApi,
    now: &Arc<Mutex<Timestamp>>,
    cache: &std::path::Path,
    allowed_sources: AllowedSources,
) -> (Arc<Context>, Triggers) {
    let config = Config {
        namespace: CONTROLLER_NS.into(),
        agent_selector: "app.kubernetes.io/name=palisade-agent".into(),
        cache_dir: cache.into(),
        allowed_sources,
    };
    let now = now.clone();
    let clock = Arc::new(move || *now.lock().unwrap());
    let (caches, triggers) = Caches::start(&api.client(), &config);
    (Arc::new(Context::new(api.client(), config, caches, Arc::new(Metrics::default()), clock)), triggers)
}

fn deny(port: u16) -> AuditFlow {
    let time = Time(Timestamp::from_second(1_800_000_000).unwrap());
    AuditFlow {
        direction: Direction::Ingress,
        subject: FlowEndpoint {
            labels: [("app".to_string(), "web".to_string())].into(),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        peer: FlowEndpoint {
            labels: [("app".to_string(), "legacy".to_string())].into(),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        port,
        protocol: Protocol::Tcp,
        enforced_verdict: Verdict::Allow,
        candidate_verdict: Verdict::Deny,
        count: 7,
        first_seen: time.clone(),
        last_seen: time,
        rule: Some("CiliumNetworkPolicy shop/web ingress[0]".into()),
        http: None,
        dns: None,
        tls: None,
        kafka: None,
    }
}

#[tokio::test]
async fn first_sync_stages_a_revision_and_starts_the_audit() {
    let h = Harness::new(NS, json!({}));
    let action = h.reconcile().await;

    let rollout = h.rollout();
    assert_eq!(rollout.metadata.finalizers, Some(vec!["palisade.dev/cleanup".to_string()]));
    let status = h.status();
    assert_eq!(status.phase, Phase::Auditing);
    assert_eq!(status.observed_generation, Some(1));
    assert!(status.enforced_revision.is_none());
    let candidate = status.candidate_revision.unwrap();
    assert!(candidate.display.starts_with("main@"), "{}", candidate.display);

    let revisions = h.revisions();
    assert_eq!(revisions.len(), 1);
    let revision = &revisions[0];
    assert_eq!(revision.metadata.name.as_deref(), Some(candidate.id.as_str()));
    assert_eq!(revision.metadata.labels.as_ref().unwrap()["palisade.dev/rollout"], "web");
    let owner = &revision.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("PolicyRollout", rollout.metadata.uid.as_deref().unwrap(), Some(true))
    );
    assert_eq!(revision.spec.commit, h.repo.head());
    assert!(revision.spec.digest.starts_with("sha256:"));
    assert_eq!(revision.spec.policy_count, 1);
    assert_eq!(revision.spec.policies[0].namespace.as_deref(), Some(NS));

    assert_eq!(h.events(), ["AuditStarted"]);
    // The status went through server-side apply under the controller's own field manager.
    let apply = h.api.requests().into_iter().find(|r| r.path.ends_with("/status")).unwrap();
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    assert!(apply.query().contains("fieldManager=palisade-controller") && apply.query().contains("force=true"));
    // No node has loaded it yet: waiting on them, and polling the source at its interval.
    assert_eq!(h.condition("Ready").unwrap().1, "WaitingForNodes");
    assert!(action == Action::requeue(Duration::from_secs(60)), "{action:?}");
}

#[tokio::test]
async fn audit_pass_promotes_and_waits_for_every_node_to_flip() {
    let h = Harness::new(NS, json!({}));
    h.reconcile().await;
    let candidate = h.candidate();
    h.audit(std::slice::from_ref(&candidate), vec![]);
    h.reconcile().await;
    assert_eq!(h.status().phase, Phase::Auditing, "minDuration has not passed");
    assert_eq!(h.condition("Auditing").unwrap().1, "AuditInProgress");

    h.advance(11);
    h.reconcile().await;
    assert_eq!(h.status().phase, Phase::Promoting);
    assert_eq!(h.enforced(), Some(candidate.clone()));
    assert_eq!(h.condition("Ready").unwrap().0, "False", "not every node has flipped");

    h.enforce(&candidate);
    h.reconcile().await;
    let status = h.status();
    assert_eq!(status.phase, Phase::Enforced);
    assert!(status.candidate_revision.is_none());
    assert_eq!(status.history[0].outcome, Outcome::Promoted);
    assert_eq!(h.condition("Ready").unwrap().0, "True");
    assert_eq!(h.events(), ["AuditStarted", "Promoting", "Promoted"]);
    let metrics = h.ctx.metrics.encode().unwrap();
    assert!(metrics.contains("palisade_promotions_total{fast_track=\"false\"} 1"), "{metrics}");
    assert!(metrics.contains("palisade_rollouts{phase=\"Enforced\"} 1"), "{metrics}");
}

#[tokio::test]
async fn audit_with_unexpected_new_denies_blocks_and_keeps_enforcing() {
    let (h, first) = Harness::enforcing().await;

    h.push(9090).await;
    let candidate = h.candidate();
    assert_ne!(candidate, first);
    h.audit(&[first.clone(), candidate], vec![deny(8080)]);
    h.reconcile().await;

    let status = h.status();
    assert_eq!(status.phase, Phase::Blocked);
    assert_eq!(status.unexpected_new_denies, 1, "one flow, denied on each node");
    assert_eq!(h.enforced(), Some(first));
    let (state, reason, message) = h.condition("PromotionBlocked").unwrap();
    assert_eq!((state.as_str(), reason.as_str()), ("True", "NewDeniesAboveLimit"));
    assert!(message.contains("shop/app=legacy") && message.contains("TCP/8080 ingress (14x on 2 nodes"), "{message}");
    assert!(h.events().contains(&"NewDeniesAboveLimit".to_string()));
    assert!(
        h.ctx.metrics.encode().unwrap().contains("palisade_audit_new_denies{namespace=\"shop\",rollout=\"web\"} 1")
    );
}

/// A PolicyDecision by `user`, as `palisade promote|abort|reaudit` creates it.
fn decide(h: &Harness, name: &str, action: &str, revision: &str, user: &str) {
    h.api.put(
        DECISIONS,
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyDecision",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"rollout": "web", "revision": revision, "action": action, "user": user}}),
    );
}

#[tokio::test]
async fn manual_promotion_waits_for_a_decision_the_controller_consumes() {
    let h = Harness::new(NS, json!({"promotion": "Manual"}));
    h.reconcile().await;
    let candidate = h.candidate();
    h.audit(std::slice::from_ref(&candidate), vec![]);
    h.advance(11);
    h.reconcile().await;
    assert_eq!(h.status().phase, Phase::Auditing);
    assert_eq!(h.condition("PromotionBlocked").unwrap().1, "AwaitingApproval");

    decide(&h, "web-promote-1", "Promote", &candidate, "alice@example.com");
    h.reconcile().await;
    let status = h.status();
    assert_eq!(status.phase, Phase::Promoting);
    assert_eq!(h.enforced(), Some(candidate.clone()));
    assert!(h.api.get(DECISIONS, NS, "web-promote-1").is_none(), "a read decision is consumed");
    assert_eq!(status.history[0].outcome, Outcome::Approved);
    assert_eq!(status.history[0].decided_by.as_deref(), Some("alice@example.com"));

    h.enforce(&candidate);
    h.reconcile().await;
    let status = h.status();
    assert_eq!(status.phase, Phase::Enforced);
    assert_eq!(status.history[0].approved_by.as_deref(), Some("alice@example.com"));
    assert!(status.approval.is_none());
}

#[tokio::test]
async fn a_decision_about_another_revision_is_ignored_and_says_why() {
    let h = Harness::new(NS, json!({"promotion": "Manual"}));
    h.reconcile().await;
    let candidate = h.candidate();
    decide(&h, "web-promote-old", "Promote", "web-0123456789", "alice");
    h.audit(std::slice::from_ref(&candidate), vec![]);
    h.advance(11);
    h.reconcile().await;
    assert_eq!(h.status().phase, Phase::Auditing, "not approved");
    assert!(h.status().approval.is_none());
    let (state, reason, message) = h.condition("Decided").unwrap();
    assert_eq!((state.as_str(), reason.as_str()), ("False", "Ignored"));
    assert!(message.contains("it names revision web-0123456789, but the candidate is"), "{message}");
    assert!(h.events().contains(&"DecisionIgnored".to_string()));
    assert!(h.api.get(DECISIONS, NS, "web-promote-old").is_none());
}

#[tokio::test]
async fn a_blocked_candidate_whose_evidence_is_wiped_stays_blocked() {
    let (h, first) = Harness::enforcing().await;
    h.push(9090).await;
    let candidate = h.candidate();
    h.audit(&[first.clone(), candidate.clone()], vec![deny(8080)]);
    h.reconcile().await;
    assert_eq!(h.status().phase, Phase::Blocked);

    // Another rollout's candidate reset the nodes' flows: clean reports, long past minDuration.
    h.audit(&[first.clone(), candidate.clone()], vec![]);
    h.advance(30);
    h.reconcile().await;
    assert_eq!(h.status().phase, Phase::Blocked);
    assert_eq!(h.enforced(), Some(first.clone()), "never auto-promoted");

    // `palisade reaudit`: the audit restarts; agents restart their evidence for the new generation.
    decide(&h, "web-reaudit-1", "Reaudit", &candidate, "alice");
    h.reconcile().await;
    let status = h.status();
    assert_eq!((status.phase, status.audit_generation), (Phase::Auditing, 1));
    assert_eq!(status.history[0].outcome, Outcome::AuditRestarted);
    h.audit(&[first.clone(), candidate.clone()], vec![]);
    h.advance(11);
    h.reconcile().await;
    assert_eq!(h.status().phase, Phase::Promoting);
}

#[tokio::test]
async fn a_policy_another_rollout_holds_fails_with_conflict() {
    let (h, _) = Harness::enforcing().await;
    let mut other = h.api.get(ROLLOUTS, NS, "web").unwrap();
    other["metadata"] = json!({"name": "web-copy", "namespace": NS});
    other.as_object_mut().unwrap().remove("status");
    h.api.put(ROLLOUTS, other);
    let rollout: PolicyRollout = serde_json::from_value(h.api.get(ROLLOUTS, NS, "web-copy").unwrap()).unwrap();
    reconcile(Arc::new(rollout), h.ctx.clone()).await.unwrap();
    let rollout: PolicyRollout = serde_json::from_value(h.api.get(ROLLOUTS, NS, "web-copy").unwrap()).unwrap();
    reconcile(Arc::new(rollout), h.ctx.clone()).await.unwrap();

    let rollout: PolicyRollout = serde_json::from_value(h.api.get(ROLLOUTS, NS, "web-copy").unwrap()).unwrap();
    let status = rollout.status.unwrap();
    assert_eq!(status.phase, Phase::Failed);
    assert!(status.candidate_revision.is_none(), "nothing staged");
    let attempt = status.last_attempted_revision.unwrap();
    assert_eq!(attempt.reason.as_deref(), Some("Conflict"));
    assert!(
        attempt.errors[0].contains("CiliumNetworkPolicy shop/web is already carried by PolicyRollout shop/web"),
        "{:?}",
        attempt.errors
    );
}

#[tokio::test]
async fn a_new_commit_supersedes_the_candidate_and_restarts_the_audit() {
    let h = Harness::new(NS, json!({}));
    h.reconcile().await;
    let first = h.candidate();
    let started = h.status().audit_started_at;
    h.advance(5);
    h.commit(9090, "move to 9090");
    h.reconcile().await;

    let status = h.status();
    let second = h.candidate();
    assert_ne!(first, second);
    assert_eq!(status.phase, Phase::Auditing);
    assert!(status.audit_started_at > started, "the audit starts over");
    assert_eq!((status.history[0].revision.as_str(), status.history[0].outcome), (first.as_str(), Outcome::Superseded));
    assert_eq!(h.revisions().len(), 2);
    assert_eq!(h.events(), ["AuditStarted", "Superseded", "AuditStarted"]);
}

#[tokio::test]
async fn an_invalid_commit_changes_nothing_enforced_and_says_why() {
    let (h, enforced) = Harness::enforcing().await;

    h.repo.write("policies/web.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  endpointSelector: 7\n");
    let bad = h.repo.commit("broken", &[]);
    h.advance(2);
    h.reconcile().await;

    let status = h.status();
    assert_eq!(h.enforced(), Some(enforced));
    assert!(status.candidate_revision.is_none());
    assert_eq!(status.phase, Phase::Failed);
    let attempt = status.last_attempted_revision.unwrap();
    assert_eq!((attempt.commit.as_str(), attempt.reason.as_deref()), (bad.as_str(), Some("ValidationFailed")));
    assert!(attempt.errors.iter().any(|e| e.starts_with("policies/web.yaml:")), "{:?}", attempt.errors);
    assert_eq!(h.revisions().len(), 1, "an invalid commit is never staged");
    assert_eq!(h.condition("Stalled").unwrap().1, "ValidationFailed");
    assert_eq!(h.events().last().map(String::as_str), Some("RevisionFailed"));
}

#[tokio::test]
async fn git_unreachable_keeps_what_is_enforced() {
    let (h, enforced) = Harness::enforcing().await;
    std::fs::rename(&h.repo.dir, h.dir.path().join("moved")).unwrap();
    h.advance(2);
    h.reconcile().await;
    assert_eq!(h.enforced(), Some(enforced));
    let (state, reason, message) = h.condition("Ready").unwrap();
    assert_eq!((state.as_str(), reason.as_str()), ("False", "GitOperationFailed"));
    assert!(message.contains("still enforcing"), "{message}");
}

#[tokio::test]
async fn a_revert_to_an_enforced_revision_is_fast_tracked() {
    let (h, first) = Harness::enforcing().await;
    h.push(9090).await;
    let second = h.promote_candidate().await;

    h.repo.git(&["revert", "--no-edit", "HEAD"]);
    h.advance(2);
    h.reconcile().await;
    assert_eq!(h.candidate(), first, "same content, same revision");
    assert_eq!(h.status().phase, Phase::Promoting);
    assert!(h.status().audit_started_at.is_none(), "no new audit");
    assert!(h.events().contains(&"FastTrack".to_string()));

    h.report(|r| r.loaded_revisions = vec![second.clone(), first.clone()]);
    h.reconcile().await;
    assert_eq!(h.enforced(), Some(first.clone()), "flipped once every node had it loaded");
    h.enforce(&first);
    h.reconcile().await;
    let status = h.status();
    assert_eq!((status.phase, status.history[0].outcome), (Phase::Enforced, Outcome::FastTracked));
    assert!(h.ctx.metrics.encode().unwrap().contains("palisade_promotions_total{fast_track=\"true\"} 1"));
}

#[tokio::test]
async fn a_drop_spike_after_promotion_rolls_back_and_never_repromotes() {
    let (h, first) = Harness::enforcing().await;
    h.push(9090).await;
    let second = h.promote_candidate().await;

    h.report(|r| r.totals.drops_per_minute = 500);
    h.advance(1);
    h.reconcile().await;
    let status = h.status();
    assert_eq!(status.phase, Phase::RolledBack);
    assert_eq!(h.enforced(), Some(first.clone()));
    assert_eq!(status.rolled_back_revisions[0].id, second);
    assert_eq!(h.condition("RolledBack").unwrap().0, "True");
    assert!(h.events().contains(&"RolledBack".to_string()));
    assert!(h.ctx.metrics.encode().unwrap().contains("palisade_rollbacks_total 1"));

    // The source still points at the rolled-back commit: it stays rolled back.
    h.enforce(&first);
    h.advance(2);
    h.reconcile().await;
    assert_eq!((h.status().phase, h.enforced()), (Phase::RolledBack, Some(first)));
}

#[tokio::test]
async fn suspend_stops_fetching_and_acting() {
    let h = Harness::new(NS, json!({}));
    h.reconcile().await;
    let candidate = h.candidate();
    h.api.update(ROLLOUTS, NS, "web", |r| r["spec"]["suspend"] = json!(true));
    h.commit(9090, "move to 9090");
    h.advance(20);
    let action = h.reconcile().await;
    let status = h.status();
    assert_eq!(h.candidate(), candidate, "the new commit is not looked at");
    assert_eq!(h.revisions().len(), 1);
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(h.condition("Reconciling").unwrap().1, "Suspended");
    assert_eq!(action, Action::await_change());

    h.api.update(ROLLOUTS, NS, "web", |r| r["spec"]["suspend"] = json!(false));
    h.reconcile().await;
    assert_ne!(h.candidate(), candidate, "resumed: the new commit supersedes");
}

#[tokio::test]
async fn a_tenant_rollout_with_policies_for_another_namespace_fails_validation() {
    let h = Harness::new("team-a", json!({}));
    h.reconcile().await;
    let status = h.status();
    assert_eq!(status.phase, Phase::Failed);
    assert!(status.enforced_revision.is_none() && status.candidate_revision.is_none());
    let attempt = status.last_attempted_revision.unwrap();
    assert_eq!(attempt.reason.as_deref(), Some("ScopeViolation"));
    assert!(attempt.errors[0].contains("CiliumNetworkPolicy shop/web is for namespace shop"), "{:?}", attempt.errors);
    assert!(h.revisions().is_empty());
    assert_eq!(h.condition("Stalled").unwrap().1, "ScopeViolation");
}

#[tokio::test]
async fn a_restarted_controller_resumes_the_audit_without_restarting_it() {
    let mut h = Harness::new(NS, json!({}));
    h.reconcile().await;
    let candidate = h.candidate();
    let started = h.status().audit_started_at;
    h.audit(std::slice::from_ref(&candidate), vec![]);
    h.advance(4);
    h.reconcile().await;

    h.restart();
    h.advance(7);
    h.reconcile().await;
    let status = h.status();
    assert_eq!(status.audit_started_at, started, "the audit is not restarted");
    assert_eq!(status.phase, Phase::Promoting, "and its 10 minutes count from before the restart");
    h.enforce(&candidate);
    h.restart();
    h.reconcile().await;
    h.reconcile().await;
    let status = h.status();
    assert_eq!(status.phase, Phase::Enforced);
    assert_eq!(status.history.iter().filter(|e| e.outcome == Outcome::Promoted).count(), 1, "promoted once");
    assert_eq!(h.events(), ["AuditStarted", "Promoting", "Promoted"]);
    assert_eq!(h.revisions().len(), 1);
}

#[tokio::test]
async fn requested_at_fetches_before_the_interval() {
    let h = Harness::new(NS, json!({"source": {"interval": "1h"}}));
    h.reconcile().await;
    let candidate = h.candidate();
    h.commit(9090, "move to 9090");
    h.reconcile().await;
    assert_eq!(h.candidate(), candidate, "not fetched before the interval");
    h.api.update(ROLLOUTS, NS, "web", |r| {
        r["metadata"]["annotations"] = json!({"reconcile.palisade.dev/requestedAt": "2027-01-15T08:00:00Z"})
    });
    assert_eq!(h.status().last_handled_reconcile_at, None);
    h.reconcile().await;
    assert_ne!(h.candidate(), candidate);
    // Recorded as handled, for `palisade reconcile --wait`.
    assert_eq!(h.status().last_handled_reconcile_at.as_deref(), Some("2027-01-15T08:00:00Z"));
}

#[tokio::test]
async fn old_revisions_are_collected_but_the_enforced_one_is_kept() {
    let (h, enforced) = Harness::enforcing().await;
    for port in 9000..9012 {
        h.push(port).await;
    }
    // Collection reads the cache: the revision a reconcile created goes on the next one.
    h.reconcile().await;
    let names: Vec<String> = h.revisions().iter().map(|r| r.metadata.name.clone().unwrap()).collect();
    assert_eq!(names.len(), 11, "the newest 10 and the enforced one: {names:?}");
    assert!(names.contains(&enforced));
    assert!(names.contains(&h.candidate()));
}

#[tokio::test]
async fn deleting_a_rollout_cleans_up_reports_and_revisions() {
    let h = Harness::new(NS, json!({}));
    h.reconcile().await;
    h.audit(&[h.candidate()], vec![]);
    h.api.put(
        REPORTS,
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyAuditReport",
            "metadata": {"name": "other-node-a", "namespace": NS, "labels": {"palisade.dev/rollout": "other"}},
            "spec": {"rollout": "other", "node": "node-a"}}),
    );
    let client = h.ctx.client.clone();
    let api: kube::Api<PolicyRollout> = kube::Api::namespaced(client, NS);
    api.delete("web", &Default::default()).await.unwrap();
    h.reconcile().await;
    assert!(h.api.get(ROLLOUTS, NS, "web").is_none(), "the finalizer was removed");
    let reports: Vec<String> =
        h.api.list(REPORTS, NS).iter().map(|r| r["metadata"]["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(reports, ["other-node-a"]);
    assert!(h.revisions().is_empty(), "owned revisions are garbage-collected");
}

#[tokio::test]
async fn a_report_from_a_node_without_a_ready_agent_does_not_count() {
    let (h, first) = Harness::enforcing().await;
    h.push(9090).await;
    let candidate = h.candidate();
    // node-b's agent is not ready (crashing, or never started): a report written for node-b
    // with new denies and without the candidate loaded is not evidence.
    h.set_agent_ready("node-b", false);
    h.report(|r| {
        let on_a = r.node == "node-a";
        r.candidate_revision = Some(candidate.clone());
        r.loaded_revisions = if on_a { vec![first.clone(), candidate.clone()] } else { vec![first.clone()] };
        r.totals = AuditTotals { observed_flows: 10, new_denies: u64::from(!on_a), ..Default::default() };
        r.endpoints =
            vec![EndpointTraffic { namespace: NS.into(), pod: format!("web-{}", r.node), workload: None, flows: 10 }];
        r.flows = if on_a { vec![] } else { vec![deny(8080)] };
    });
    h.advance(11);
    h.reconcile().await;
    let status = h.status();
    assert_eq!(status.unexpected_new_denies, 0, "node-b's denies do not count");
    assert_eq!(status.phase, Phase::Promoting, "node-b neither blocks nor holds the barrier");
    assert_eq!(h.enforced(), Some(candidate.clone()));
    h.report(|r| {
        if r.node == "node-a" {
            r.enforced_revision = Some(candidate.clone());
        }
    });
    h.reconcile().await;
    assert_eq!(h.status().phase, Phase::Enforced, "enforced on every node with a ready agent");

    // Once node-b's agent is ready, its node holds the barrier again.
    h.set_agent_ready("node-b", true);
    h.reconcile().await;
    let (ready, reason, _) = h.condition("Ready").unwrap();
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "WaitingForNodes"));
}

#[tokio::test]
async fn an_insecure_source_is_refused_in_a_cluster_unless_allowed() {
    let (mut h, first) = Harness::enforcing().await;
    h.restart_allowing(AllowedSources::Secure);
    h.commit(9090, "move to 9090");
    h.advance(2);
    h.reconcile().await;
    h.advance(2);
    h.reconcile().await;

    let status = h.status();
    assert_eq!(h.enforced(), Some(first.clone()), "what is enforced stays");
    assert!(status.candidate_revision.is_none());
    assert_eq!(h.revisions().len(), 1, "nothing staged");
    assert!(!h.cache.join(NS).join("web").exists(), "nothing fetched: no mirror");
    for type_ in ["Ready", "Stalled"] {
        let (state, reason, message) = h.condition(type_).unwrap();
        assert_eq!(
            (state.as_str(), reason.as_str()),
            (if type_ == "Ready" { "False" } else { "True" }, "InsecureSource")
        );
        assert!(message.contains(&h.repo.url()) && message.contains("--allow-insecure-sources"), "{message}");
    }
    let refusals = h.events().iter().filter(|e| *e == "InsecureSource").count();
    assert_eq!(refusals, 1, "one Event, not one per reconcile: {:?}", h.events());

    // With --allow-insecure-sources the same repository is fetched and its new commit staged.
    h.restart_allowing(AllowedSources::Any);
    h.reconcile().await;
    assert_ne!(h.candidate(), first);
    assert_eq!(h.status().phase, Phase::Auditing);
    assert!(h.condition("Stalled").is_none());
}

/// A policy of `rules` ingress rules, each from its own client with a long label value: about
/// 150 bytes of the PolicyRevision per rule.
fn large_policy(name: &str, rules: usize) -> String {
    let mut text = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
         spec:\n  endpointSelector:\n    matchLabels:\n      app: web\n  ingress:\n"
    );
    for i in 0..rules {
        text += &format!(
            "  - fromEndpoints:\n    - matchLabels:\n        app: client-{i:0>56}\n    toPorts:\n    - ports:\n      \
             - port: \"{}\"\n        protocol: TCP\n",
            1024 + i % 60000
        );
    }
    text
}

#[tokio::test]
async fn a_revision_over_one_mebibyte_fails_cleanly_and_a_smaller_commit_proceeds() {
    let (h, first) = Harness::enforcing().await;
    for i in 0..8 {
        h.repo.write(&format!("policies/big-{i}.yaml"), &large_policy(&format!("big-{i}"), 2000));
    }
    let large = h.repo.commit("a 2 MiB policy set", &[]);
    h.advance(2);
    h.reconcile().await;

    let status = h.status();
    let attempt = status.last_attempted_revision.clone().expect("an attempt");
    assert_eq!((attempt.commit.as_str(), attempt.reason.as_deref()), (large.as_str(), Some("RevisionTooLarge")));
    let error = attempt.errors.join("; ");
    let size: usize = error.split_whitespace().find_map(|w| w.parse().ok()).expect("the size in bytes");
    assert!(size > 2 << 20, "{error}");
    assert!(error.contains("1048576"), "the limit: {error}");
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(h.enforced(), Some(first.clone()), "what is enforced stays");
    assert_eq!(h.revisions().len(), 1, "no PolicyRevision was written");
    assert_eq!(h.condition("Ready").unwrap().1, "RevisionTooLarge");
    assert!(h.events().contains(&"RevisionFailed".to_string()), "{:?}", h.events());
    let warning = h.api.list(EVENTS, NS).into_iter().find(|e| e["reason"] == "RevisionFailed").unwrap();
    assert_eq!(warning["type"], "Warning");
    assert!(warning["note"].as_str().unwrap().contains("1048576"), "{warning}");

    // Not stuck: the next, smaller commit is staged and audited.
    h.repo.git(&["rm", "-q", "policies/big-*.yaml"]);
    h.push(9090).await;
    let status = h.status();
    assert_eq!(status.phase, Phase::Auditing);
    assert_ne!(h.candidate(), first);
    assert!(status.last_attempted_revision.unwrap().reason.is_none());
}

/// node-a loads the candidate and audits it cleanly; node-b reports that it has not loaded it.
fn only_node_a_loads(h: &Harness) {
    let candidate = h.candidate();
    let generation = h.status().audit_generation;
    h.report(|r| {
        if r.node == "node-a" {
            r.audit_generation = generation;
            r.loaded_revisions = vec![candidate.clone()];
            r.candidate_revision = Some(candidate.clone());
            r.totals = AuditTotals { observed_flows: 10, ..Default::default() };
            r.endpoints =
                vec![EndpointTraffic { namespace: NS.into(), pod: "web-node-a".into(), workload: None, flows: 10 }];
        }
    });
}

#[tokio::test]
async fn nodes_that_do_not_load_within_the_progress_deadline_stall_the_rollout_until_they_do() {
    let h = Harness::new(NS, json!({}));
    h.reconcile().await;
    only_node_a_loads(&h);
    h.advance(9);
    h.reconcile().await;
    assert_eq!(h.condition("Stalled"), None, "within spec.progressDeadline (10m by default)");

    h.advance(2);
    h.reconcile().await;
    let (stalled, reason, message) = h.condition("Stalled").expect("Stalled");
    assert_eq!((stalled.as_str(), reason.as_str()), ("True", "ProgressDeadlineExceeded"));
    assert!(message.contains("1 of 2 nodes have loaded") && message.contains("(waiting for node-b)"), "{message}");
    assert!(h.events().contains(&"ProgressDeadlineExceeded".to_string()));
    assert_eq!(h.status().phase, Phase::Auditing, "still waiting, and saying so");

    let candidate = h.candidate();
    h.audit(std::slice::from_ref(&candidate), vec![]);
    h.reconcile().await;
    assert_eq!(h.condition("Stalled"), None, "cleared once node-b loaded");
    assert_eq!(h.status().phase, Phase::Promoting);
}

#[tokio::test]
async fn a_node_not_ready_beyond_the_grace_is_left_out_and_waited_for_again_when_back() {
    let h = Harness::new(NS, json!({}));
    h.set_node_ready("node-a", true);
    h.set_node_ready("node-b", false);
    h.reconcile().await;
    only_node_a_loads(&h);
    h.advance(3);
    h.reconcile().await;
    let (_, reason, message) = h.condition("Ready").unwrap();
    assert_eq!(reason, "WaitingForNodes", "within spec.audit.notReadyGrace (5m by default): {message}");
    assert!(message.contains("waiting for node-b"), "{message}");
    assert_eq!(h.condition("NodesLeftOut"), None);

    h.advance(8);
    h.reconcile().await;
    let (left_out, _, message) = h.condition("NodesLeftOut").expect("NodesLeftOut");
    assert_eq!(left_out, "True");
    assert!(message.contains("node-b (NotReady for 11m0s)"), "{message}");
    let candidate = h.candidate();
    assert_eq!(h.status().phase, Phase::Promoting, "node-a alone holds the barrier");
    h.report(|r| {
        if r.node == "node-a" {
            r.enforced_revision = Some(candidate.clone());
        }
    });
    h.reconcile().await;
    assert_eq!(h.status().phase, Phase::Enforced);

    // Back: node-b is waited for again until it enforces what the others do.
    h.set_node_ready("node-b", true);
    h.reconcile().await;
    assert_eq!(h.condition("NodesLeftOut"), None);
    let (ready, reason, message) = h.condition("Ready").unwrap();
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "WaitingForNodes"), "{message}");
    h.enforce(&candidate);
    h.reconcile().await;
    assert_eq!(h.condition("Ready").unwrap().0, "True");
}

#[tokio::test]
async fn a_node_whose_report_is_older_than_two_heartbeats_is_treated_as_not_ready() {
    let h = Harness::new(NS, json!({}));
    h.reconcile().await;
    only_node_a_loads(&h);
    // Every agent rewrites an unchanged report once per heartbeat (5m); node-b stops at minute 0.
    let beat = |nodes: &[&str]| {
        let now = Time(h.now());
        h.report(|r| {
            if nodes.contains(&r.node.as_str()) {
                r.reported_at = Some(now.clone());
                r.heartbeat = Some(Duration::from_secs(300).into());
            }
        })
    };
    beat(&["node-a", "node-b"]);
    h.advance(12);
    beat(&["node-a"]);
    h.reconcile().await;
    let (_, reason, message) = h.condition("Ready").unwrap();
    assert_eq!(reason, "WaitingForNodes", "silent for 2m beyond two heartbeats, within the grace: {message}");
    assert_eq!(h.condition("NodesLeftOut"), None);

    h.advance(4);
    beat(&["node-a"]);
    h.reconcile().await;
    let message = h.condition("NodesLeftOut").expect("NodesLeftOut").2;
    assert!(message.contains("node-b (no report for two heartbeats for 6m0s)"), "{message}");
    assert_eq!(h.status().phase, Phase::Promoting, "node-a alone holds the barrier");
}

#[tokio::test]
async fn a_flow_denied_on_every_node_counts_once_against_max_new_denies() {
    let h = Harness::new(NS, json!({"audit": {"maxNewDenies": 1}}));
    h.reconcile().await;
    let candidate = h.candidate();
    h.audit(std::slice::from_ref(&candidate), vec![deny(8080)]);
    h.reconcile().await;
    let status = h.status();
    assert_eq!((status.new_denies, status.unexpected_new_denies), (1, 1), "one flow, seen on both nodes");
    assert_eq!(status.phase, Phase::Auditing, "not blocked");
    h.advance(11);
    h.reconcile().await;
    assert_eq!(h.status().phase, Phase::Promoting);
}

/// `palisade_reconcile_duration_seconds_count`: reconciles so far.
fn reconciles(ctx: &Context) -> u64 {
    let metrics = ctx.metrics.encode().unwrap();
    let line = metrics.lines().find(|l| l.starts_with("palisade_reconcile_duration_seconds_count")).unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_burst_of_report_writes_is_one_reconcile_per_window_and_no_list() {
    let h = Harness::new(NS, json!({}));
    let (ctx, triggers) = context_for(&h.api, &h.now, &h.cache, h.allowed_sources);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(control(ctx.clone(), triggers, async move {
        let _ = stopped.await;
    }));
    // The Controller stages the first revision and settles.
    for _ in 0..500 {
        if h.status().candidate_revision.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let candidate = h.candidate();
    tokio::time::sleep(REPORT_WINDOW * 3).await;
    let (reconciled, lists) = (reconciles(&ctx), h.api.count("list"));

    const WRITES: u64 = 40;
    for flows in 1..=WRITES / 2 {
        h.report(|r| {
            r.candidate_revision = Some(candidate.clone());
            r.totals.observed_flows = flows;
        });
    }
    tokio::time::sleep(REPORT_WINDOW * 3).await;
    let burst = reconciles(&ctx) - reconciled;
    assert_eq!(h.status().observed_flows, WRITES, "the last reconcile saw the last writes of both nodes");
    assert!((1..=6).contains(&burst), "{WRITES} report writes caused {burst} reconciles");
    assert_eq!(h.api.count("list") - lists, 0, "reconciles read the caches, not the API server");

    stop.send(()).unwrap();
    controller.await.unwrap();
}
