//! `palisade get|describe|promote|abort|suspend|resume|reconcile` against an in-memory API server
//! (kube-rs's mock-service pattern): the exact requests sent and the exact output printed.

use std::sync::{Arc, Mutex};

use clap::Parser;
use http::{Request, Response, StatusCode};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use palisade::cmd::cluster::Session;
use palisade::cmd::rollouts::{self, Command};
use serde_json::{Value as Json, json};

const BASE: &str = "/apis/palisade.dev/v1alpha1";
const NOW: &str = "2025-06-01T12:00:00Z";

/// One request the fake API server received.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: String,
    /// Path and query, as sent.
    uri: String,
    content_type: Option<String>,
    body: Option<Json>,
}

/// An API server holding palisade.dev objects in memory: GET, LIST and PATCH (merge and apply,
/// both merged as JSON merge patches, which is what they amount to for the fields used here).
struct Fake {
    objects: Vec<Json>,
    /// Answer status patches with 403, as for a user without palisade-approver.
    forbid_status: bool,
}

impl Fake {
    fn handle(&mut self, method: &str, path: &str, body: Option<&Json>) -> (StatusCode, Json) {
        let Some(rest) = path.strip_prefix(BASE) else { return not_found(path) };
        let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let (namespace, plural, name, sub) = match parts.as_slice() {
            [plural] => (None, *plural, None, None),
            ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
            ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
            ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
            _ => return not_found(path),
        };
        let kind = match plural {
            "policyrollouts" => "PolicyRollout",
            "policyauditreports" => "PolicyAuditReport",
            _ => return not_found(path),
        };
        let selected = |o: &Json| {
            o["kind"] == kind
                && namespace.is_none_or(|ns| o["metadata"]["namespace"] == ns)
                && name.is_none_or(|n| o["metadata"]["name"] == n)
        };
        match (method, name, sub) {
            ("GET", None, None) => {
                let items: Vec<Json> = self.objects.iter().filter(|o| selected(o)).cloned().collect();
                let list = json!({"apiVersion": "palisade.dev/v1alpha1", "kind": format!("{kind}List"), "metadata": {}, "items": items});
                (StatusCode::OK, list)
            }
            ("GET", Some(name), None) => match self.objects.iter().find(|o| selected(o)) {
                Some(o) => (StatusCode::OK, o.clone()),
                None => not_found(name),
            },
            ("PATCH", Some(name), sub) => {
                if sub == Some("status") && self.forbid_status {
                    let message = format!(
                        "policyrollouts.palisade.dev \"{name}\" is forbidden: User \"bob\" cannot patch resource \"policyrollouts/status\" in API group \"palisade.dev\" in the namespace \"shop\""
                    );
                    return (StatusCode::FORBIDDEN, status(403, "Forbidden", &message));
                }
                let Some(object) = self.objects.iter_mut().find(|o| selected(o)) else { return not_found(name) };
                let mut patch = body.cloned().unwrap_or_default();
                if sub == Some("status") {
                    // The status subresource ignores everything but status.
                    patch = json!({"status": patch["status"].clone()});
                }
                merge(object, &patch);
                (StatusCode::OK, object.clone())
            }
            _ => not_found(path),
        }
    }
}

fn status(code: u16, reason: &str, message: &str) -> Json {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn not_found(what: &str) -> (StatusCode, Json) {
    (StatusCode::NOT_FOUND, status(404, "NotFound", &format!("\"{what}\" not found")))
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Json, patch: &Json) {
    let Json::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().unwrap();
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            merge(target.entry(k.clone()).or_insert(Json::Null), v);
        }
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A client whose requests the fake answers, and the log of what it received.
fn serve(fake: Fake) -> (Client, Log, Arc<Mutex<Fake>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fake = Arc::new(Mutex::new(fake));
    let (log, state) = (seen.clone(), fake.clone());
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.expect("request body");
            let body: Option<Json> =
                (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).expect("request body is JSON"));
            let content_type = parts.headers.get(http::header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string());
            let uri = parts.uri.path_and_query().unwrap().to_string();
            log.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                uri: uri.clone(),
                content_type,
                body: body.clone(),
            });
            let (code, answer) = state.lock().unwrap().handle(parts.method.as_str(), parts.uri.path(), body.as_ref());
            let response = Response::builder().status(code).body(Body::from(serde_json::to_vec(&answer).unwrap()));
            respond.send_response(response.unwrap());
        }
    });
    (Client::new(service, "default"), seen, fake)
}

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

struct Run {
    result: anyhow::Result<u8>,
    out: String,
    seen: Vec<Seen>,
    fake: Arc<Mutex<Fake>>,
}

/// Runs `palisade ARGS` as user alice in namespace shop, at NOW.
async fn run(fake: Fake, args: &[&str]) -> Run {
    let (client, seen, fake) = serve(fake);
    let session = Session {
        client,
        namespace: "shop".into(),
        user: Some("alice".into()),
        now: NOW.parse::<Timestamp>().unwrap(),
    };
    let command = Cli::try_parse_from(std::iter::once("palisade").chain(args.iter().copied())).unwrap().command;
    let mut out = Vec::new();
    let result = rollouts::execute(&session, command, &mut out).await;
    let seen = seen.lock().unwrap().clone();
    Run { result, out: String::from_utf8(out).unwrap(), seen, fake }
}

fn get(uri: &str) -> Seen {
    Seen { method: "GET".into(), uri: uri.into(), content_type: None, body: None }
}

fn revision(display: &str, id: &str, commit: &str) -> Json {
    json!({"id": id, "commit": commit, "display": display})
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Json {
    json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": "2025-06-01T11:50:00Z"})
}

/// `web`: Manual, auditing main@b2c3d4e beside main@a1b2c3d, waiting for approval.
fn web() -> Json {
    json!({
        "apiVersion": "palisade.dev/v1alpha1",
        "kind": "PolicyRollout",
        "metadata": {"name": "web", "namespace": "shop", "creationTimestamp": "2025-06-01T10:00:00Z",
                     "managedFields": [{"manager": "kubectl"}]},
        "spec": {
            "source": {"url": "https://git.example.com/shop/policies.git", "ref": {"branch": "main"}, "path": "policies"},
            "promotion": "Manual",
            "audit": {"minDuration": "10m", "expectedDenies": [{"peerLabels": {"app": "legacy"}}]},
        },
        "status": {
            "phase": "Auditing",
            "enforcedRevision": revision("main@a1b2c3d", "rev-a1", "a1b2c3d4"),
            "candidateRevision": revision("main@b2c3d4e", "rev-b2", "b2c3d4e5"),
            "auditStartedAt": "2025-06-01T11:30:00Z",
            "newDenies": 3, "unexpectedNewDenies": 1, "newAllows": 0, "observedFlows": 40,
            "conditions": [
                condition("Ready", "False", "AwaitingApproval", "audit of main@b2c3d4e passed; waiting for approval: kubectl palisade promote <name>"),
                condition("Auditing", "True", "AwaitingApproval", "audit of main@b2c3d4e passed"),
            ],
            "history": [{"revision": "rev-a1", "commit": "a1b2c3d4", "display": "main@a1b2c3d", "outcome": "Promoted",
                         "enforcedAt": "2025-05-31T12:00:00Z", "recordedAt": "2025-05-31T12:00:00Z", "approvedBy": "carol",
                         "message": "promoted on 2 nodes"}],
        },
    })
}

/// `api`: Auto, enforcing main@c3d4e5f, Ready.
fn api() -> Json {
    json!({
        "apiVersion": "palisade.dev/v1alpha1",
        "kind": "PolicyRollout",
        "metadata": {"name": "api", "namespace": "shop", "creationTimestamp": "2025-05-29T12:00:00Z"},
        "spec": {"source": {"url": "https://git.example.com/shop/api.git", "ref": {"tag": "v1.2.0"}}},
        "status": {
            "phase": "Enforced",
            "enforcedRevision": revision("v1.2.0@c3d4e5f", "rev-c3", "c3d4e5f6"),
            "conditions": [condition("Ready", "True", "Enforced", "enforcing v1.2.0@c3d4e5f on every node")],
        },
    })
}

fn flow(subject: &str, peer: Json, port: u16, count: u64, rule: &str) -> Json {
    json!({
        "direction": "Ingress",
        "subject": {"namespace": "shop", "workload": subject},
        "peer": peer,
        "port": port, "protocol": "TCP",
        "enforcedVerdict": "Allow", "candidateVerdict": "Deny",
        "count": count,
        "firstSeen": "2025-06-01T11:31:00Z", "lastSeen": "2025-06-01T11:59:00Z",
        "rule": rule,
    })
}

fn report(node: &str, rollout: &str, candidate: &str, flows: Vec<Json>, loaded: &[&str]) -> Json {
    let denies = flows.len();
    json!({
        "apiVersion": "palisade.dev/v1alpha1",
        "kind": "PolicyAuditReport",
        "metadata": {"name": format!("{rollout}-{node}"), "namespace": "shop"},
        "spec": {
            "rollout": rollout, "node": node, "candidateRevision": candidate,
            "totals": {"observedFlows": 20, "newDenies": denies, "newAllows": 1},
            "flows": flows, "loadedRevisions": loaded, "enforcedRevision": "rev-a1",
        },
    })
}

fn cluster() -> Fake {
    let frontend = json!({"namespace": "shop", "workload": "frontend"});
    let legacy = json!({"namespace": "shop", "labels": {"app": "legacy"}});
    let deny_rule = "CiliumNetworkPolicy shop/backend ingress[0]";
    let legacy_rule = "CiliumNetworkPolicy shop/deny-legacy ingress[0]";
    let objects = vec![
        web(),
        api(),
        report(
            "node-a",
            "web",
            "rev-b2",
            vec![flow("backend", frontend.clone(), 8080, 5, deny_rule)],
            &["rev-a1", "rev-b2"],
        ),
        report(
            "node-b",
            "web",
            "rev-b2",
            vec![flow("backend", frontend, 8080, 7, deny_rule), flow("db", legacy, 5432, 2, legacy_rule)],
            &["rev-a1", "rev-b2"],
        ),
        report("node-a", "api", "rev-zz", vec![flow("api", json!({"cidr": "0.0.0.0/0"}), 443, 99, "x")], &[]),
    ];
    Fake { objects, forbid_status: false }
}

fn status_of(fake: &Mutex<Fake>, name: &str) -> Json {
    let fake = fake.lock().unwrap();
    fake.objects.iter().find(|o| o["kind"] == "PolicyRollout" && o["metadata"]["name"] == name).unwrap()["status"]
        .clone()
}

#[tokio::test]
async fn get_rollouts_prints_the_crd_columns() {
    let run = run(cluster(), &["get", "rollouts"]).await;
    assert_eq!(run.result.unwrap(), 0);
    assert_eq!(run.seen, vec![get(&format!("{BASE}/namespaces/shop/policyrollouts?"))]);
    assert_eq!(
        run.out,
        "\
NAME   ENFORCED         CANDIDATE      PHASE      NEW-DENIES   READY   AGE
web    main@a1b2c3d     main@b2c3d4e   Auditing   3            False   120m
api    v1.2.0@c3d4e5f                  Enforced   0            True    3d
"
    );
}

#[tokio::test]
async fn get_rollouts_all_namespaces_and_wide() {
    let run = run(cluster(), &["get", "pro", "-A", "-o", "wide"]).await;
    assert_eq!(run.result.unwrap(), 0);
    assert_eq!(run.seen, vec![get(&format!("{BASE}/policyrollouts?"))]);
    let lines: Vec<&str> = run.out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "NAMESPACE",
            "NAME",
            "ENFORCED",
            "CANDIDATE",
            "PHASE",
            "NEW-DENIES",
            "READY",
            "AGE",
            "PROMOTION",
            "REF",
            "MESSAGE"
        ]
    );
    assert!(lines[1].starts_with("shop        web "), "{}", lines[1]);
    assert!(lines[1].contains("   Manual      branch main   audit of main@b2c3d4e passed;"), "{}", lines[1]);
    assert!(lines[2].contains("   Auto        tag v1.2.0    enforcing v1.2.0@c3d4e5f on every node"), "{}", lines[2]);
}

#[tokio::test]
async fn get_one_rollout_as_json_and_yaml() {
    let run = run(cluster(), &["get", "rollouts", "web", "-o", "json"]).await;
    assert_eq!(run.seen, vec![get(&format!("{BASE}/namespaces/shop/policyrollouts/web"))]);
    let printed: Json = serde_json::from_str(&run.out).unwrap();
    assert_eq!(printed["kind"], "PolicyRollout");
    assert_eq!(printed["status"]["candidateRevision"]["display"], "main@b2c3d4e");
    assert!(printed["metadata"].get("managedFields").is_none(), "managedFields are left out, as kubectl does");

    let run = self::run(cluster(), &["get", "rollouts", "-o", "yaml"]).await;
    assert!(run.out.starts_with("apiVersion: v1\nkind: List\n"), "{}", run.out);
    assert!(run.out.contains("  name: web\n") && run.out.contains("  name: api\n"), "{}", run.out);
}

#[tokio::test]
async fn get_nothing_and_missing() {
    let run = run(Fake { objects: vec![], forbid_status: false }, &["get", "rollouts"]).await;
    assert_eq!(run.out, "No resources found in shop namespace.\n");
    let run = self::run(cluster(), &["get", "rollouts", "nope"]).await;
    let error = run.result.unwrap_err().to_string();
    assert_eq!(error, "policyrollouts.palisade.dev \"nope\" not found in namespace \"shop\"");
}

#[tokio::test]
async fn describe_aggregates_the_audit_across_nodes() {
    let run = run(cluster(), &["describe", "rollout", "web"]).await;
    assert_eq!(run.result.unwrap(), 0, "{}", run.out);
    assert_eq!(
        run.seen,
        vec![
            get(&format!("{BASE}/namespaces/shop/policyrollouts/web")),
            get(&format!("{BASE}/namespaces/shop/policyauditreports?"))
        ]
    );
    let expected = "\
Name:        web
Namespace:   shop
Created:     2025-06-01T10:00:00Z (120m ago)
Source:      https://git.example.com/shop/policies.git (branch main, path policies, every 60s)
Audit gates: at least 600s, 1 flow(s) per endpoint, at most 0 unexpected new denies, 1 expected-deny selector(s)
Promotion:   Manual
Rollback:    watch 600s after promotion, roll back above +100 drops/min, fast-track reverts: true
Scope:       Namespace
Suspended:   false
Status:
  Phase:         Auditing
  Enforced:      main@a1b2c3d (rev-a1, a1b2c3d4)
  Candidate:     main@b2c3d4e (rev-b2, b2c3d4e5)
  Audit started: 2025-06-01T11:30:00Z (30m ago)
  Audit:         40 flows observed, 3 new denies (1 unexpected), 0 new allows
Conditions:
  TYPE     STATUS REASON           AGE MESSAGE
  Ready    False  AwaitingApproval 10m audit of main@b2c3d4e passed; waiting for approval: kubectl palisade promote <name>
  Auditing True   AwaitingApproval 10m audit of main@b2c3d4e passed
History:
  REVISION     OUTCOME  AGE APPROVED-BY MESSAGE
  main@a1b2c3d Promoted 24h carol       promoted on 2 nodes
Audit of main@b2c3d4e (2 node reports):
  NODE   LOADED ENFORCING OBSERVED NEW-DENIES NEW-ALLOWS
  node-a yes    rev-a1    20       1          1
  node-b yes    rev-a1    20       2          1
  Newly denied flows:
    DIRECTION SUBJECT      PEER              PORT     COUNT NODES         EXPECTED RULE
    Ingress   shop/backend shop/frontend     8080/TCP 12    node-a,node-b no       CiliumNetworkPolicy shop/backend ingress[0]
    Ingress   shop/db      shop/{app=legacy} 5432/TCP 2     node-b        yes      CiliumNetworkPolicy shop/deny-legacy ingress[0]
";
    assert_eq!(run.out, expected, "\n{}", run.out);
}

#[tokio::test]
async fn promote_applies_the_approval_to_the_status_subresource() {
    let run = run(cluster(), &["promote", "web"]).await;
    assert_eq!(run.result.unwrap(), 0);
    assert_eq!(
        run.out,
        "policyrollout.palisade.dev/web approved: main@b2c3d4e (rev-b2) as alice; it is promoted once its audit passes\n"
    );
    let approval = json!({"revision": "rev-b2", "approvedBy": "alice", "approvedAt": NOW});
    assert_eq!(
        run.seen,
        vec![
            get(&format!("{BASE}/namespaces/shop/policyrollouts/web")),
            Seen {
                method: "PATCH".into(),
                uri: format!(
                    "{BASE}/namespaces/shop/policyrollouts/web/status?&force=true&fieldManager=palisade-promote"
                ),
                content_type: Some("application/apply-patch+yaml".into()),
                body: Some(json!({
                    "apiVersion": "palisade.dev/v1alpha1",
                    "kind": "PolicyRollout",
                    "metadata": {"name": "web"},
                    "status": {"approval": approval},
                })),
            },
        ]
    );
    assert_eq!(status_of(&run.fake, "web")["approval"], approval);
}

#[tokio::test]
async fn promote_refuses_what_it_cannot_approve() {
    // Auto rollouts need no approval.
    let run = run(cluster(), &["promote", "api"]).await;
    let error = run.result.unwrap_err().to_string();
    assert!(error.contains("has no candidate to promote (phase Enforced, enforcing v1.2.0@c3d4e5f)"), "{error}");
    assert_eq!(run.seen.len(), 1, "nothing is written");

    let mut fake = cluster();
    fake.objects[1]["status"]["candidateRevision"] = revision("v1.3.0@d4e5f6a", "rev-d4", "d4e5f6a7");
    fake.objects[1]["status"]["phase"] = json!("Auditing");
    let run = self::run(fake, &["promote", "api"]).await;
    let error = run.result.unwrap_err().to_string();
    assert!(error.contains("promotes automatically (spec.promotion: Auto)"), "{error}");

    // A blocked audit: an approval never overrides the gates.
    let mut fake = cluster();
    fake.objects[0]["status"]["phase"] = json!("Blocked");
    fake.objects[0]["status"]["conditions"] =
        json!([condition("PromotionBlocked", "True", "NewDeniesAboveLimit", "3 unexpected new denies, above 0")]);
    let run = self::run(fake, &["promote", "web"]).await;
    let error = run.result.unwrap_err().to_string();
    assert!(
        error.starts_with("policyrollout/web cannot be promoted in phase Blocked: 3 unexpected new denies, above 0\n"),
        "{error}"
    );
    assert_eq!(run.seen.len(), 1, "nothing is written");

    // Already approved: nothing to do.
    let mut fake = cluster();
    fake.objects[0]["status"]["approval"] = json!({"revision": "rev-b2", "approvedBy": "carol", "approvedAt": NOW});
    let run = self::run(fake, &["promote", "web"]).await;
    assert_eq!(run.out, "policyrollout.palisade.dev/web unchanged: main@b2c3d4e was already approved by carol\n");
    assert_eq!(run.seen.len(), 1);
}

#[tokio::test]
async fn promote_without_the_status_permission_says_which_role_grants_it() {
    let mut fake = cluster();
    fake.forbid_status = true;
    let run = run(fake, &["promote", "web"]).await;
    let error = run.result.unwrap_err().to_string();
    assert!(error.contains("cannot patch resource \"policyrollouts/status\""), "{error}");
    assert!(error.contains("palisade-approver ClusterRole grants it"), "{error}");
}

#[tokio::test]
async fn abort_applies_the_abort_under_its_own_manager() {
    let run = run(cluster(), &["abort", "web"]).await;
    assert_eq!(run.result.unwrap(), 0);
    assert_eq!(
        run.out,
        "policyrollout.palisade.dev/web aborted: main@b2c3d4e is dropped; main@a1b2c3d stays enforced\n"
    );
    let abort = json!({"revision": "rev-b2", "commit": "b2c3d4e5", "abortedBy": "alice", "abortedAt": NOW});
    let patch = &run.seen[1];
    assert_eq!(patch.method, "PATCH");
    assert_eq!(
        patch.uri,
        format!("{BASE}/namespaces/shop/policyrollouts/web/status?&force=true&fieldManager=palisade-abort")
    );
    assert_eq!(patch.content_type.as_deref(), Some("application/apply-patch+yaml"));
    assert_eq!(patch.body.as_ref().unwrap()["status"], json!({"abort": abort}));
    assert_eq!(status_of(&run.fake, "web")["abort"], abort);

    let mut fake = cluster();
    fake.objects[0]["status"]["phase"] = json!("Promoting");
    let run = self::run(fake, &["abort", "web"]).await;
    let error = run.result.unwrap_err().to_string();
    assert!(
        error.contains("is already promoting main@b2c3d4e: nodes may have flipped; revert the commit instead"),
        "{error}"
    );

    let run = self::run(cluster(), &["abort", "api"]).await;
    assert_eq!(run.result.unwrap_err().to_string(), "policyrollout/api has no candidate to abort (phase Enforced)");
}

#[tokio::test]
async fn suspend_and_resume_patch_the_spec() {
    let run = run(cluster(), &["suspend", "web"]).await;
    assert_eq!(run.result.unwrap(), 0);
    assert_eq!(run.out, "policyrollout.palisade.dev/web suspended\n");
    assert_eq!(
        run.seen[1],
        Seen {
            method: "PATCH".into(),
            uri: format!("{BASE}/namespaces/shop/policyrollouts/web?&fieldManager=palisade"),
            content_type: Some("application/merge-patch+json".into()),
            body: Some(json!({"spec": {"suspend": true}})),
        }
    );

    let run = self::run(cluster(), &["resume", "web"]).await;
    assert_eq!(run.out, "policyrollout.palisade.dev/web unchanged: already not suspended\n");
    assert_eq!(run.seen.len(), 1, "nothing to patch");

    let mut fake = cluster();
    fake.objects[0]["spec"]["suspend"] = json!(true);
    let run = self::run(fake, &["resume", "web", "-n", "ignored-by-the-test-session"]).await;
    assert_eq!(run.out, "policyrollout.palisade.dev/web resumed\n");
    assert_eq!(run.seen[1].body, Some(json!({"spec": {"suspend": false}})));
}

#[tokio::test]
async fn reconcile_annotates_like_flux() {
    let run = run(cluster(), &["reconcile", "web"]).await;
    assert_eq!(run.result.unwrap(), 0);
    assert_eq!(run.out, format!("policyrollout.palisade.dev/web annotated: reconcile requested at {NOW}\n"));
    assert_eq!(
        run.seen[1].body,
        Some(json!({"metadata": {"annotations": {"reconcile.palisade.dev/requestedAt": NOW}}}))
    );

    let mut fake = cluster();
    fake.objects[0]["spec"]["suspend"] = json!(true);
    let run = self::run(fake, &["reconcile", "web"]).await;
    assert_eq!(run.result.unwrap_err().to_string(), "policyrollout/web is suspended; `palisade resume web` first");
    assert_eq!(run.seen.len(), 1);
}
