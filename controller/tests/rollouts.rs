//! `palisade get|describe|promote|abort|reaudit|suspend|resume|reconcile` against an in-memory API server
//! (kube-rs's mock-service pattern): the exact requests sent and the exact output printed; and
//! with `--local`, against local mode's store in a temporary directory filled with the same
//! objects: the same output, and the request left for `palisade local run`.

use std::sync::{Arc, Mutex};

use clap::Parser;
use http::{Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use palisade::cmd::cluster::Session;
use palisade::cmd::rollouts::{self, Backend, Command, LocalState};
use palisade::local::store::{LocalEvent, Request as LocalRequest, Store};
use palisade_rollout::crd::{DecisionAction, PolicyAuditReport, PolicyDecisionSpec, PolicyRevision, PolicyRollout};
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
    /// Answer creates of PolicyDecisions with 403, as for a user without palisade-approver.
    forbid_decisions: bool,
}

/// Who the fake's SelfSubjectReview says the caller is (the kubeconfig says `kubeconfig-alice`).
const AUTHENTICATED: &str = "alice";
/// The suffix the fake appends to a `generateName`.
const GENERATED: &str = "x7k2p";

impl Fake {
    fn handle(&mut self, method: &str, path: &str, body: Option<&Json>) -> (StatusCode, Json) {
        if path == "/apis/authentication.k8s.io/v1/selfsubjectreviews" && method == "POST" {
            let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
                "metadata": {}, "status": {"userInfo": {"username": AUTHENTICATED, "groups": ["system:authenticated"]}}});
            return (StatusCode::CREATED, review);
        }
        if let Some(namespace) = path.strip_prefix("/api/v1/namespaces/").and_then(|p| p.strip_suffix("/events")) {
            // Every Event of the namespace: the CLI filters by the object too.
            let items: Vec<Json> = self
                .objects
                .iter()
                .filter(|o| o["kind"] == "Event" && o["metadata"]["namespace"] == namespace)
                .cloned()
                .collect();
            return (StatusCode::OK, json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items}));
        }
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
            "policyrevisions" => "PolicyRevision",
            "policydecisions" => "PolicyDecision",
            _ => return not_found(path),
        };
        let selected = |o: &Json| {
            o["kind"] == kind
                && namespace.is_none_or(|ns| o["metadata"]["namespace"] == ns)
                && name.is_none_or(|n| o["metadata"]["name"] == n)
        };
        match (method, name, sub) {
            ("GET", None, None) => {
                // In key order, as etcd lists them.
                let mut items: Vec<Json> = self.objects.iter().filter(|o| selected(o)).cloned().collect();
                items.sort_by_key(|o| (o["metadata"]["namespace"].to_string(), o["metadata"]["name"].to_string()));
                let list = json!({"apiVersion": "palisade.dev/v1alpha1", "kind": format!("{kind}List"), "metadata": {}, "items": items});
                (StatusCode::OK, list)
            }
            ("GET", Some(name), None) => match self.objects.iter().find(|o| selected(o)) {
                Some(o) => (StatusCode::OK, o.clone()),
                None => not_found(name),
            },
            ("POST", None, None) => {
                if self.forbid_decisions {
                    let message = "policydecisions.palisade.dev is forbidden: User \"bob\" cannot create resource \"policydecisions\" in API group \"palisade.dev\" in the namespace \"shop\"";
                    return (StatusCode::FORBIDDEN, status(403, "Forbidden", message));
                }
                let mut object = body.cloned().unwrap_or_default();
                let name = format!("{}{GENERATED}", object["metadata"]["generateName"].as_str().unwrap_or_default());
                object["metadata"]["name"] = json!(name);
                self.objects.push(object.clone());
                (StatusCode::CREATED, object)
            }
            ("PATCH", Some(name), sub) => {
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

/// `palisade ARGS` on [`cluster`]: it succeeds and prints `out`.
async fn succeeds(args: &[&str], out: &str) -> Run {
    let run = run(cluster(), args).await;
    assert_eq!(*run.result.as_ref().expect("the command succeeds"), 0);
    assert_eq!(run.out, out);
    run
}

/// Runs `palisade ARGS` as user alice in namespace shop, at NOW.
async fn run(fake: Fake, args: &[&str]) -> Run {
    let (client, seen, fake) = serve(fake);
    let session = Session {
        client,
        namespace: "shop".into(),
        user: Some("kubeconfig-alice".into()),
        now: NOW.parse::<Timestamp>().unwrap(),
    };
    let command = Cli::try_parse_from(std::iter::once("palisade").chain(args.iter().copied())).unwrap().command;
    let mut out = Vec::new();
    let result = rollouts::execute(&Backend::Cluster(session), command, &mut out).await;
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
        "metadata": {"name": format!("{rollout}-{node}"), "namespace": "shop", "creationTimestamp": "2025-06-01T11:30:00Z",
                     "labels": {"palisade.dev/rollout": rollout, "palisade.dev/node": node}},
        "spec": {
            "rollout": rollout, "node": node, "candidateRevision": candidate,
            "auditStartedAt": if node == "node-b" { "2025-06-01T11:50:00Z" } else { "2025-06-01T11:30:00Z" },
            "totals": {"observedFlows": 20, "newDenies": denies, "newAllows": 1},
            "flows": flows, "loadedRevisions": loaded, "enforcedRevision": "rev-a1",
        },
    })
}

/// A PolicyRevision of `rollout` as the controller stages it.
fn policy_revision(rollout: &str, id: &str, display: &str, created: &str, policies: u32) -> Json {
    let commit = format!("{}{}", &display[display.find('@').unwrap() + 1..], "0".repeat(33));
    json!({
        "apiVersion": "palisade.dev/v1alpha1",
        "kind": "PolicyRevision",
        "metadata": {"name": id, "namespace": "shop", "creationTimestamp": created,
                     "labels": {"palisade.dev/rollout": rollout}},
        "spec": {"rollout": rollout, "commit": commit, "display": display,
                 "digest": format!("sha256:{}", "ab".repeat(32)), "policyCount": policies, "policies": []},
    })
}

/// An Event about a rollout as the Recorder writes it (events.k8s.io), seen through the core API.
fn event(rollout: &str, n: u32, at: &str, type_: &str, reason: &str, message: &str) -> Json {
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{rollout}.{n}"), "namespace": "shop"},
        "involvedObject": {"apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyRollout", "name": rollout, "namespace": "shop"},
        "eventTime": at,
        "type": type_, "reason": reason, "message": message, "action": reason,
        "reportingComponent": "palisade-controller", "reportingInstance": "palisade-controller-0",
    })
}

fn events() -> Vec<Json> {
    vec![
        event("web", 2, "2025-06-01T11:50:00.000000Z", "Normal", "AuditPassed", "audit of main@b2c3d4e passed"),
        event(
            "web",
            1,
            "2025-06-01T11:30:00.000000Z",
            "Normal",
            "AuditStarted",
            "auditing main@b2c3d4e beside main@a1b2c3d",
        ),
        event("api", 1, "2025-05-29T12:00:00.000000Z", "Normal", "Promoted", "v1.2.0@c3d4e5f enforced"),
    ]
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
        policy_revision("web", "rev-a1", "main@a1b2c3d", "2025-05-31T12:00:00Z", 2),
        policy_revision("web", "rev-b2", "main@b2c3d4e", "2025-06-01T11:30:00Z", 3),
        policy_revision("api", "rev-c3", "v1.2.0@c3d4e5f", "2025-05-29T12:00:00Z", 1),
    ];
    Fake { objects: objects.into_iter().chain(events()).collect(), forbid_decisions: false }
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
api    v1.2.0@c3d4e5f                  Enforced   0            True    3d
web    main@a1b2c3d     main@b2c3d4e   Auditing   3            False   120m
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
    assert!(lines[2].starts_with("shop        web "), "{}", lines[2]);
    assert!(lines[2].contains("   Manual      branch main   audit of main@b2c3d4e passed;"), "{}", lines[2]);
    assert!(lines[1].contains("   Auto        tag v1.2.0    enforcing v1.2.0@c3d4e5f on every node"), "{}", lines[1]);
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
    let run = run(Fake { objects: vec![], forbid_decisions: false }, &["get", "rollouts"]).await;
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
            get(&format!("{BASE}/namespaces/shop/policyauditreports?")),
            get(
                "/api/v1/namespaces/shop/events?&fieldSelector=involvedObject.kind%3DPolicyRollout%2CinvolvedObject.name%3Dweb"
            ),
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
  NODE   LOADED ENFORCING EVIDENCE OBSERVED NEW-DENIES NEW-ALLOWS
  node-a yes    rev-a1    30m      20       1          1
  node-b yes    rev-a1    10m      20       2          1
  Newly denied flows:
    DIRECTION SUBJECT      PEER              PORT     COUNT NODES EXPECTED RULE
    Ingress   shop/backend shop/frontend     8080/TCP 12    2     no       CiliumNetworkPolicy shop/backend ingress[0]
    Ingress   shop/db      shop/{app=legacy} 5432/TCP 2     1     yes      CiliumNetworkPolicy shop/deny-legacy ingress[0]
Events:
  Type   Reason       Age  From                Message
  ----   ------       ---- ----                -------
  Normal AuditStarted 30m  palisade-controller auditing main@b2c3d4e beside main@a1b2c3d
  Normal AuditPassed  10m  palisade-controller audit of main@b2c3d4e passed
";
    assert_eq!(run.out, expected, "\n{}", run.out);
}

/// The PolicyDecision a command created in the fake.
fn decision(fake: &Mutex<Fake>) -> Json {
    let fake = fake.lock().unwrap();
    fake.objects.iter().find(|o| o["kind"] == "PolicyDecision").cloned().expect("a PolicyDecision was created")
}

#[tokio::test]
async fn promote_creates_a_decision_as_the_authenticated_user() {
    let run = succeeds(&["promote", "web"], "policyrollout.palisade.dev/web approved: main@b2c3d4e (rev-b2) as alice (policydecision/web-promote-x7k2p); it is promoted once its audit passes\n").await;
    let seen: Vec<(&str, &str)> = run.seen.iter().map(|s| (s.method.as_str(), s.uri.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("GET", format!("{BASE}/namespaces/shop/policyrollouts/web").as_str()),
            ("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews?"),
            ("POST", format!("{BASE}/namespaces/shop/policydecisions?").as_str()),
        ]
    );
    let created = decision(&run.fake);
    assert_eq!(
        created["spec"],
        json!({"rollout": "web", "revision": "rev-b2", "action": "Promote", "user": "alice"}),
        "the user the API server authenticated, not the kubeconfig's name"
    );
    assert_eq!(created["metadata"]["labels"]["palisade.dev/rollout"], "web");
    assert!(run.seen.iter().all(|s| !s.uri.contains("/status")), "nothing writes the rollout's status");
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
async fn promote_without_the_decision_permission_says_which_role_grants_it() {
    let mut fake = cluster();
    fake.forbid_decisions = true;
    let run = run(fake, &["promote", "web"]).await;
    let error = run.result.unwrap_err().to_string();
    assert!(error.contains("cannot create resource \"policydecisions\""), "{error}");
    assert!(error.contains("palisade-approver ClusterRole grants it"), "{error}");
}

#[tokio::test]
async fn abort_and_reaudit_create_decisions_about_the_candidate() {
    let run = succeeds(
        &["abort", "web"],
        "policyrollout.palisade.dev/web aborted: main@b2c3d4e (rev-b2) as alice (policydecision/web-abort-x7k2p); main@a1b2c3d stays enforced and this commit is not staged again\n",
    )
    .await;
    assert_eq!(
        decision(&run.fake)["spec"],
        json!({"rollout": "web", "revision": "rev-b2", "action": "Abort", "user": "alice"})
    );

    let mut fake = cluster();
    fake.objects[0]["status"]["phase"] = json!("Blocked");
    let run = self::run(fake, &["reaudit", "web"]).await;
    assert_eq!(run.result.unwrap(), 0);
    assert_eq!(
        run.out,
        "policyrollout.palisade.dev/web re-audited: main@b2c3d4e (rev-b2) as alice (policydecision/web-reaudit-x7k2p); its evidence is discarded and the audit starts again\n"
    );
    assert_eq!(decision(&run.fake)["spec"]["action"], "Reaudit");

    let mut fake = cluster();
    fake.objects[0]["status"]["phase"] = json!("Promoting");
    let run = self::run(fake, &["abort", "web"]).await;
    let error = run.result.unwrap_err().to_string();
    assert!(
        error.contains("is already promoting main@b2c3d4e: nodes may have flipped; revert the commit instead"),
        "{error}"
    );

    let run = self::run(cluster(), &["abort", "api"]).await;
    assert_eq!(
        run.result.unwrap_err().to_string(),
        "policyrollout/api has no candidate to abort (phase Enforced, enforcing v1.2.0@c3d4e5f)"
    );
    let run = self::run(cluster(), &["reaudit", "api"]).await;
    assert!(run.result.unwrap_err().to_string().starts_with("policyrollout/api has no candidate to re-audit"));
}

#[tokio::test]
async fn suspend_and_resume_patch_the_spec() {
    let run = succeeds(&["suspend", "web"], "policyrollout.palisade.dev/web suspended\n").await;
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
    let run = succeeds(
        &["reconcile", "web"],
        &format!("policyrollout.palisade.dev/web annotated: reconcile requested at {NOW}\n"),
    )
    .await;
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

#[tokio::test]
async fn get_revisions_and_reports_print_their_crd_columns() {
    let run = succeeds(
        &["get", "revisions"],
        "\
NAME     ROLLOUT   REVISION         POLICIES   AGE
rev-a1   web       main@a1b2c3d     2          24h
rev-b2   web       main@b2c3d4e     3          30m
rev-c3   api       v1.2.0@c3d4e5f   1          3d
",
    )
    .await;
    assert_eq!(run.seen, vec![get(&format!("{BASE}/namespaces/shop/policyrevisions?"))]);
    succeeds(
        &["get", "prev", "-o", "wide"],
        &format!(
            "\
NAME     ROLLOUT   REVISION         POLICIES   AGE   COMMIT                                     DIGEST
rev-a1   web       main@a1b2c3d     2          24h   a1b2c3d000000000000000000000000000000000   sha256:{ab}
rev-b2   web       main@b2c3d4e     3          30m   b2c3d4e000000000000000000000000000000000   sha256:{ab}
rev-c3   api       v1.2.0@c3d4e5f   1          3d    c3d4e5f000000000000000000000000000000000   sha256:{ab}
",
            ab = "ab".repeat(32)
        ),
    )
    .await;
    succeeds(
        &["get", "reports"],
        "\
NAME         ROLLOUT   NODE     CANDIDATE   NEW-DENIES   ENFORCING   AGE
api-node-a   api       node-a   rev-zz      1            rev-a1      30m
web-node-a   web       node-a   rev-b2      1            rev-a1      30m
web-node-b   web       node-b   rev-b2      2            rev-a1      30m
",
    )
    .await;
    succeeds(&["get", "par", "-o", "wide"], "\
NAME         ROLLOUT   NODE     CANDIDATE   NEW-DENIES   ENFORCING   AGE   OBSERVED   NEW-ALLOWS   DROPS/MIN   EVIDENCE   LOADED
api-node-a   api       node-a   rev-zz      1            rev-a1      30m   20         1            0           30m        
web-node-a   web       node-a   rev-b2      1            rev-a1      30m   20         1            0           30m        rev-a1,rev-b2
web-node-b   web       node-b   rev-b2      2            rev-a1      30m   20         1            0           10m        rev-a1,rev-b2
").await;

    // One object as JSON, a List as YAML.
    let run = succeeds_json(&["get", "report", "web-node-b", "-o", "json"]).await;
    assert_eq!(run.seen, vec![get(&format!("{BASE}/namespaces/shop/policyauditreports/web-node-b"))]);
    let printed: Json = serde_json::from_str(&run.out).unwrap();
    assert_eq!(
        (printed["kind"].as_str(), printed["spec"]["totals"]["newDenies"].as_u64()),
        (Some("PolicyAuditReport"), Some(2))
    );
    let run = succeeds_json(&["get", "revisions", "-o", "yaml"]).await;
    assert!(run.out.starts_with("apiVersion: v1\nkind: List\n"), "{}", run.out);
    assert!(
        run.out.contains("  kind: PolicyRevision\n") && run.out.contains("    display: \"v1.2.0@c3d4e5f\"\n"),
        "{}",
        run.out
    );

    // A selector goes to the API server as labelSelector; a name that is not there, as kubectl says.
    let run = self::run(cluster(), &["get", "reports", "-l", "palisade.dev/rollout=web", "-A"]).await;
    assert_eq!(run.seen, vec![get(&format!("{BASE}/policyauditreports?&labelSelector=palisade.dev%2Frollout%3Dweb"))]);
    let run = self::run(cluster(), &["get", "revisions", "rev-zz"]).await;
    assert_eq!(
        run.result.unwrap_err().to_string(),
        "policyrevisions.palisade.dev \"rev-zz\" not found in namespace \"shop\""
    );
    let run = self::run(Fake { objects: vec![], forbid_decisions: false }, &["get", "reports"]).await;
    assert_eq!(run.out, "No resources found in shop namespace.\n");
}

/// `palisade ARGS` on [`cluster`]: it succeeds, whatever it prints.
async fn succeeds_json(args: &[&str]) -> Run {
    let run = run(cluster(), args).await;
    assert_eq!(*run.result.as_ref().expect("the command succeeds"), 0);
    run
}

// Local mode: the same commands with --local, against a store in a temporary directory.

/// Local mode's state directory with `objects` (rollouts, reports and Events, as the fake holds
/// them) in its store, the way `palisade local run` writes them.
fn state_with(objects: &[Json]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    for object in objects {
        match object["kind"].as_str().unwrap() {
            "PolicyRollout" => {
                store.put_rollout(&serde_json::from_value::<PolicyRollout>(object.clone()).unwrap()).unwrap();
            }
            "PolicyAuditReport" => {
                store.put_report(&serde_json::from_value::<PolicyAuditReport>(object.clone()).unwrap()).unwrap();
            }
            "PolicyRevision" => {
                store.put_revision(&serde_json::from_value::<PolicyRevision>(object.clone()).unwrap()).unwrap();
            }
            "Event" => {
                let text = |key: &str| object[key].as_str().unwrap().to_string();
                let event = LocalEvent {
                    time: serde_json::from_value(object["eventTime"].clone()).unwrap(),
                    type_: text("type"),
                    reason: text("reason"),
                    namespace: object["metadata"]["namespace"].as_str().unwrap().into(),
                    rollout: object["involvedObject"]["name"].as_str().unwrap().into(),
                    message: text("message"),
                };
                store.append_event(&event).unwrap();
            }
            other => panic!("no {other} in local mode"),
        }
    }
    dir
}

/// Runs `palisade ARGS` on local mode's state in `dir`, as alice at NOW; `namespace` is -n.
async fn run_local(dir: &std::path::Path, namespace: Option<&str>, args: &[&str]) -> (anyhow::Result<u8>, String) {
    let mut local = LocalState::new(dir, namespace.map(String::from));
    local.user = "alice".into();
    local.now = NOW.parse::<Timestamp>().unwrap();
    let command = Cli::try_parse_from(std::iter::once("palisade").chain(args.iter().copied())).unwrap().command;
    let mut out = Vec::new();
    let result = rollouts::execute(&Backend::Local(local), command, &mut out).await;
    (result, String::from_utf8(out).unwrap())
}

fn requests(dir: &std::path::Path, rollout: &str) -> Vec<LocalRequest> {
    Store::new(dir).take_requests("shop", rollout).unwrap()
}

#[tokio::test]
async fn local_reads_print_what_the_cluster_prints() {
    let state = state_with(&cluster().objects);
    let commands: [&[&str]; 16] = [
        &["get", "rollouts"],
        &["get", "revisions"],
        &["get", "revisions", "-o", "wide"],
        &["get", "revisions", "rev-b2", "-o", "json"],
        &["get", "reports"],
        &["get", "reports", "-o", "wide"],
        &["get", "reports", "-o", "yaml"],
        &["get", "reports", "web-node-a", "-o", "yaml"],
        &["get", "reports", "-A"],
        &["get", "pro", "-o", "wide"],
        &["get", "rollouts", "-A"],
        &["get", "rollouts", "web", "-o", "json"],
        &["get", "rollouts", "-o", "json"],
        &["get", "rollouts", "-o", "yaml"],
        &["describe", "rollout", "web"],
        &["describe", "rollout", "api"],
    ];
    for command in commands {
        let cluster = run(cluster(), command).await;
        assert_eq!(cluster.result.unwrap(), 0);
        let local_command: Vec<&str> = command.iter().copied().chain(["--local"]).collect();
        for namespace in [Some("shop"), None] {
            let (result, out) = run_local(state.path(), namespace, &local_command).await;
            assert_eq!(result.unwrap(), 0, "{command:?}");
            assert_eq!(out, cluster.out, "{command:?} with --local, namespace {namespace:?}");
        }
    }
    // The Events are the rollout's own, from the store, oldest first.
    let (_, out) = run_local(state.path(), None, &["describe", "rollout", "api", "--local"]).await;
    assert!(
        out.ends_with("Audit: no candidate\nEvents:\n  Type   Reason   Age  From                Message\n  ----   ------   ---- ----                -------\n  Normal Promoted 3d   palisade-controller v1.2.0@c3d4e5f enforced\n"),
        "{out}"
    );
}

/// A rollout of `promotion` in `phase`, with what the table shows of it.
fn in_phase(
    name: &str,
    phase: &str,
    enforced: Option<&str>,
    candidate: Option<&str>,
    denies: u32,
    ready: &str,
) -> Json {
    let mut rollout = api();
    rollout["metadata"]["name"] = json!(name);
    let status = &mut rollout["status"];
    status["phase"] = json!(phase);
    status["enforcedRevision"] = enforced.map_or(Json::Null, |e| revision(e, &format!("rev-{e}"), "c0ffee"));
    status["candidateRevision"] = candidate.map_or(Json::Null, |c| revision(c, &format!("rev-{c}"), "facade"));
    status["newDenies"] = json!(denies);
    status["conditions"] = json!([condition("Ready", ready, phase, "")]);
    let Json::Object(fields) = status else { unreachable!() };
    fields.retain(|_, v| !v.is_null());
    rollout
}

#[tokio::test]
async fn local_get_shows_a_rollout_in_every_phase() {
    let objects = [
        in_phase("pending", "Pending", None, None, 0, "Unknown"),
        in_phase("auditing", "Auditing", Some("main@1111111"), Some("main@2222222"), 0, "False"),
        in_phase("promoting", "Promoting", Some("main@1111111"), Some("main@2222222"), 0, "False"),
        in_phase("enforced", "Enforced", Some("main@2222222"), None, 0, "True"),
        in_phase("blocked", "Blocked", Some("main@1111111"), Some("main@3333333"), 4, "False"),
        in_phase("inconclusive", "Inconclusive", Some("main@1111111"), Some("main@3333333"), 0, "False"),
        in_phase("failed", "Failed", None, None, 0, "False"),
        in_phase("rolledback", "RolledBack", Some("main@1111111"), None, 0, "True"),
    ];
    let state = state_with(&objects);
    let (result, out) = run_local(state.path(), None, &["get", "rollouts", "--local"]).await;
    assert_eq!(result.unwrap(), 0);
    assert_eq!(
        out,
        "\
NAME           ENFORCED       CANDIDATE      PHASE          NEW-DENIES   READY     AGE
auditing       main@1111111   main@2222222   Auditing       0            False     3d
blocked        main@1111111   main@3333333   Blocked        4            False     3d
enforced       main@2222222                  Enforced       0            True      3d
failed                                       Failed         0            False     3d
inconclusive   main@1111111   main@3333333   Inconclusive   0            False     3d
pending                                      Pending        0            Unknown   3d
promoting      main@1111111   main@2222222   Promoting      0            False     3d
rolledback     main@1111111                  RolledBack     0            True      3d
"
    );
    let cluster = run(Fake { objects: objects.to_vec(), forbid_decisions: false }, &["get", "rollouts"]).await;
    assert_eq!(out, cluster.out, "the cluster prints the same table");

    // JSON: the stored objects, status and all.
    let (_, out) = run_local(state.path(), None, &["get", "rollouts", "blocked", "--local", "-o", "json"]).await;
    let printed: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(printed["kind"], "PolicyRollout");
    assert_eq!(printed["status"]["phase"], "Blocked");
    assert_eq!(printed["status"]["newDenies"], 4);
}

#[tokio::test]
async fn local_namespaces_and_missing_rollouts() {
    let mut staging = web();
    staging["metadata"]["namespace"] = json!("staging");
    let state = state_with(&[web(), api(), staging]);

    // Without --namespace, every namespace, and a NAMESPACE column once there are several.
    let (_, out) = run_local(state.path(), None, &["get", "rollouts", "--local"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAMESPACE   NAME   ENFORCED"), "{out}");
    assert!(lines[1].starts_with("shop        api ") && lines[3].starts_with("staging     web "), "{out}");
    let (_, out) = run_local(state.path(), Some("staging"), &["get", "rollouts", "--local", "-n", "staging"]).await;
    assert!(out.starts_with("NAME   ENFORCED") && out.lines().count() == 2, "{out}");
    let (_, out) = run_local(state.path(), Some("prod"), &["get", "rollouts", "--local", "-n", "prod"]).await;
    assert_eq!(out, "No resources found in prod namespace.\n");

    let (result, _) = run_local(state.path(), None, &["describe", "rollout", "web", "--local"]).await;
    assert_eq!(result.unwrap_err().to_string(), "rollout web exists in several namespaces: say which with --namespace");
    let (result, out) = run_local(state.path(), Some("staging"), &["describe", "rollout", "web", "--local"]).await;
    assert_eq!(result.unwrap(), 0);
    assert!(out.starts_with("Name:        web\nNamespace:   staging\n"), "{out}");

    // A missing rollout: the cluster's error, naming the state directory without a namespace.
    let cluster = run(cluster(), &["promote", "nope"]).await;
    let (result, _) = run_local(state.path(), Some("shop"), &["promote", "nope", "--local"]).await;
    assert_eq!(result.unwrap_err().to_string(), cluster.result.unwrap_err().to_string());
    let (result, _) = run_local(state.path(), None, &["get", "rollouts", "nope", "--local"]).await;
    let error = result.unwrap_err().to_string();
    assert_eq!(
        error,
        format!("policyrollouts.palisade.dev \"nope\" not found in local mode ({})", state.path().display())
    );

    // A state directory local mode never ran in.
    let empty = tempfile::tempdir().unwrap();
    let (result, _) = run_local(empty.path(), None, &["get", "rollouts", "--local"]).await;
    let error = result.unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("no local mode state in {}: start `palisade local run`", empty.path().display()))
    );
}

/// The decisions local mode's store holds for rollout `web`.
fn local_decisions(dir: &std::path::Path) -> Vec<PolicyDecisionSpec> {
    Store::new(dir).decisions("shop", "web").unwrap().into_iter().map(|d| d.spec).collect()
}

/// A command's message without the decision's generated name.
fn unnamed(message: &str) -> String {
    match (message.find("(policydecision/"), message.find("); ")) {
        (Some(start), Some(end)) if start < end => format!("{}{}", &message[..start], &message[end + 1..]),
        _ => message.to_string(),
    }
}

#[tokio::test]
async fn local_writes_leave_the_clusters_change_as_a_request_or_decision() {
    let at = || Time(NOW.parse::<Timestamp>().unwrap());
    let decided =
        |action| PolicyDecisionSpec { rollout: "web".into(), revision: "rev-b2".into(), action, user: "alice".into() };
    let cases: [(&[&str], Vec<LocalRequest>, Vec<PolicyDecisionSpec>); 6] = [
        (&["promote", "web"], vec![], vec![decided(DecisionAction::Promote)]),
        (&["abort", "web"], vec![], vec![decided(DecisionAction::Abort)]),
        (&["reaudit", "web"], vec![], vec![decided(DecisionAction::Reaudit)]),
        (&["suspend", "web"], vec![LocalRequest::Suspend(true)], vec![]),
        (&["resume", "web"], vec![], vec![]),
        (&["reconcile", "web"], vec![LocalRequest::Reconcile(at())], vec![]),
    ];
    for (command, expected, decisions) in cases {
        let state = state_with(&cluster().objects);
        let cluster = run(cluster(), command).await;
        let local_command: Vec<&str> = command.iter().copied().chain(["--local"]).collect();
        let (result, out) = run_local(state.path(), None, &local_command).await;
        assert_eq!(result.unwrap(), cluster.result.unwrap());
        assert_eq!(unnamed(&out), unnamed(&cluster.out), "{command:?}: the cluster's message");
        assert_eq!(local_decisions(state.path()), decisions, "{command:?}");
        assert_eq!(requests(state.path(), "web"), expected, "{command:?}");
        assert!(requests(state.path(), "api").is_empty());
    }

    // Resume a suspended rollout; reconcile refuses one.
    let mut suspended = web();
    suspended["spec"]["suspend"] = json!(true);
    let state = state_with(&[suspended]);
    let (result, out) = run_local(state.path(), None, &["resume", "web", "--local"]).await;
    assert_eq!(result.unwrap(), 0);
    assert_eq!(out, "policyrollout.palisade.dev/web resumed\n");
    assert_eq!(requests(state.path(), "web"), [LocalRequest::Suspend(false)]);
    let (result, _) = run_local(state.path(), None, &["reconcile", "web", "--local"]).await;
    assert_eq!(result.unwrap_err().to_string(), "policyrollout/web is suspended; `palisade resume web` first");
    assert!(requests(state.path(), "web").is_empty());

    // What the cluster refuses, local mode refuses too, and leaves nothing.
    let state = state_with(&cluster().objects);
    for command in [&["promote", "api", "--local"][..], &["abort", "api", "--local"], &["reaudit", "api", "--local"]] {
        let (result, _) = run_local(state.path(), None, command).await;
        let cluster = run(cluster(), &command[..2]).await;
        assert_eq!(result.unwrap_err().to_string(), cluster.result.unwrap_err().to_string());
    }
    let mut approved = web();
    approved["status"]["approval"] = json!({"revision": "rev-b2", "approvedBy": "carol", "approvedAt": NOW});
    let state = state_with(&[approved]);
    let (_, out) = run_local(state.path(), None, &["promote", "web", "--local"]).await;
    assert_eq!(out, "policyrollout.palisade.dev/web unchanged: main@b2c3d4e was already approved by carol\n");
    assert!(local_decisions(state.path()).is_empty());
    assert!(requests(state.path(), "api").is_empty());
}

#[test]
fn local_flags() {
    let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("palisade").chain(args.iter().copied()));
    assert!(parse(&["get", "rollouts", "--local", "--state", "/tmp/x", "-n", "shop"]).is_ok());
    assert!(parse(&["promote", "web", "--local"]).is_ok());
    let error = parse(&["get", "rollouts", "--state", "/tmp/x"]).err().unwrap().to_string();
    assert!(error.contains("--local"), "{error}");
    assert!(parse(&["describe", "rollout", "web", "--local", "--context", "prod"]).is_err());
}

#[tokio::test]
async fn local_selectors_select_as_the_api_server_would() {
    let state = state_with(&cluster().objects);
    let names = |out: &str| out.lines().map(|l| l.split_whitespace().next().unwrap().to_string()).collect::<Vec<_>>();
    let cases: [(&[&str], &[&str]); 4] = [
        (&["get", "reports", "-l", "palisade.dev/node=node-b"], &["NAME", "web-node-b"]),
        (
            &["get", "reports", "-l", "palisade.dev/rollout in (api,db),palisade.dev/node!=node-b"],
            &["NAME", "api-node-a"],
        ),
        (&["get", "revisions", "--selector", "palisade.dev/rollout=web"], &["NAME", "rev-a1", "rev-b2"]),
        (&["get", "rollouts", "-l", "!palisade.dev/rollout"], &["NAME", "api", "web"]),
    ];
    for (command, expected) in cases {
        let local_command: Vec<&str> = command.iter().copied().chain(["--local"]).collect();
        let (result, out) = run_local(state.path(), None, &local_command).await;
        assert_eq!(result.unwrap(), 0, "{command:?}");
        assert_eq!(names(&out), expected, "{command:?}");
    }
    let (_, out) =
        run_local(state.path(), Some("shop"), &["get", "par", "-l", "palisade.dev/rollout=db", "--local"]).await;
    assert_eq!(out, "No resources found in shop namespace.\n");
    let (result, _) = run_local(state.path(), None, &["get", "reports", "-l", "tier in front", "--local"]).await;
    let error = result.unwrap_err().to_string();
    assert!(error.starts_with("unable to parse requirement: "), "{error}");
}

/// What a command printed so far, while it runs.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap().lines().map(String::from).collect()
    }

    /// The lines once there are `n`; fails after 10 s.
    async fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.lines().len() < n {
            assert!(tokio::time::Instant::now() < deadline, "waiting for {n} lines: {:?}", self.lines());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.lines()
    }
}

#[tokio::test]
async fn local_watch_prints_a_line_per_change() {
    let state = state_with(&[web(), api()]);
    let store = Store::new(state.path());
    let out = Shared::default();
    let mut local = LocalState::new(state.path(), None);
    local.now = NOW.parse::<Timestamp>().unwrap();
    let backend = Backend::Local(local);
    let command = Cli::try_parse_from(["palisade", "get", "rollouts", "--watch", "--local"]).unwrap().command;
    let mut writer = out.clone();
    let watching = rollouts::execute(&backend, command, &mut writer);
    let changes = async {
        let lines = out.wait_for(3).await;
        assert_eq!(lines[0], "NAME   ENFORCED         CANDIDATE      PHASE      NEW-DENIES   READY   AGE");
        assert!(lines[2].starts_with("web    main@a1b2c3d     main@b2c3d4e   Auditing   3            False   120m"));

        // web is promoted: one line, aligned with the table.
        let mut promoted: PolicyRollout = serde_json::from_value(web()).unwrap();
        let status = promoted.status.as_mut().unwrap();
        status.phase = palisade_rollout::crd::Phase::Enforced;
        status.enforced_revision = status.candidate_revision.take();
        status.conditions[0].status = "True".into();
        store.put_rollout(&promoted).unwrap();
        let lines = out.wait_for(4).await;
        assert!(
            lines[3].starts_with("web    main@b2c3d4e                    Enforced   3            True    120m"),
            "{lines:?}"
        );

        // Written again unchanged: nothing. A new rollout: its line.
        store.put_rollout(&promoted).unwrap();
        let mut db: PolicyRollout = serde_json::from_value(api()).unwrap();
        db.metadata.name = Some("db".into());
        tokio::time::sleep(rollouts::LOCAL_POLL * 3).await;
        store.put_rollout(&db).unwrap();
        let lines = out.wait_for(5).await;
        assert!(
            lines[4].starts_with("db     v1.2.0@c3d4e5f                  Enforced   0            True    3d"),
            "{lines:?}"
        );
        tokio::time::sleep(rollouts::LOCAL_POLL * 3).await;
        assert_eq!(out.lines().len(), 5, "{:?}", out.lines());
    };
    tokio::select! {
        result = watching => panic!("the watch ended: {result:?}"),
        () = changes => {}
    }
}

#[tokio::test]
async fn local_reconcile_wait_returns_once_local_mode_has_acted() {
    let state = state_with(&[api()]);
    let store = Store::new(state.path());
    let out = Shared::default();
    let mut local = LocalState::new(state.path(), None);
    local.now = NOW.parse::<Timestamp>().unwrap();
    let backend = Backend::Local(local);
    let command =
        Cli::try_parse_from(["palisade", "reconcile", "api", "--wait", "--local", "--timeout", "20s"]).unwrap().command;
    let mut writer = out.clone();
    let waiting = rollouts::execute(&backend, command, &mut writer);
    // What `palisade local run` does with the request: the sync, recorded as handled.
    let local_run = async {
        let requests = loop {
            let requests = store.take_requests("shop", "api").unwrap();
            if !requests.is_empty() {
                break requests;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(requests, [LocalRequest::Reconcile(Time(NOW.parse::<Timestamp>().unwrap()))]);
        out.wait_for(3).await;
        let mut rollout = store.rollout("shop", "api").unwrap().unwrap();
        rollout.status.as_mut().unwrap().last_handled_reconcile_at = Some(NOW.into());
        store.put_rollout(&rollout).unwrap();
        std::future::pending::<()>().await
    };
    let result = tokio::select! {
        result = waiting => result,
        () = local_run => unreachable!(),
    };
    assert_eq!(result.unwrap(), 0);
    assert_eq!(
        out.lines(),
        [
            format!("policyrollout.palisade.dev/api annotated: reconcile requested at {NOW}"),
            "waiting for policyrollout/api to be reconciled (timeout 20s)".into(),
            "policyrollout/api: waiting for the controller to act on the request".into(),
            "policyrollout.palisade.dev/api reconciled: Enforced (Enforced): enforcing v1.2.0@c3d4e5f on every node"
                .into(),
        ]
    );
}
