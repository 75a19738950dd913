//! The `palisade` binary against the in-memory API server on a local port, reached through a
//! kubeconfig as a cluster would be: `--kubeconfig` and its precedence over `$KUBECONFIG`,
//! `get --watch` seeing changes made in the API, `reconcile --wait`, and `version`.
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use palisade_fake_apiserver::FakeApi;
use palisade_fake_apiserver::collections::{REPORTS, REVISIONS, ROLLOUTS};
use serde_json::{Value as Json, json};

#[path = "common/api.rs"]
mod api;

const DEPLOYMENTS: &str = "apis/apps/v1/deployments";

/// `palisade ARGS` with `$KUBECONFIG` set to `kubeconfig` (None: unset) and no home directory, so
/// that only what the test gives is read.
fn palisade(kubeconfig: Option<&Path>, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_palisade"));
    command.args(args).env_remove("HOME").env_remove("KUBERNETES_SERVICE_HOST");
    match kubeconfig {
        Some(path) => command.env("KUBECONFIG", path),
        None => command.env_remove("KUBECONFIG"),
    };
    command
}

fn run(mut command: Command) -> (i32, String, String) {
    let Output { status, stdout, stderr } = command.output().expect("run palisade");
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (status.code().expect("exited"), text(stdout), text(stderr))
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A PolicyRollout enforcing `main@a1b2c3d`, Ready.
fn rollout(namespace: &str, name: &str) -> Json {
    json!({
        "apiVersion": "palisade.dev/v1alpha1",
        "kind": "PolicyRollout",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": "2025-06-01T10:00:00Z"},
        "spec": {"source": {"url": "https://git.example.com/shop/policies.git", "ref": {"branch": "main"}}},
        "status": {
            "phase": "Enforced",
            "enforcedRevision": {"id": "rev-a1", "commit": "a1b2c3d4", "display": "main@a1b2c3d"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "Enforced",
                            "message": "main@a1b2c3d is enforced on all 2 nodes", "lastTransitionTime": "2025-06-01T10:00:00Z"}],
        },
    })
}

#[test]
fn kubeconfig_flag_wins_over_the_environment() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = FakeApi::default();
    fake.put(ROLLOUTS, rollout("shop", "web"));
    fake.put(ROLLOUTS, rollout("bank", "ledger"));
    let address = api::listen(&runtime, &fake);
    let dir = tempfile::tempdir().unwrap();
    let good = api::kubeconfig(dir.path(), "good", &format!("http://{address}"), "shop");
    // Nothing listens on port 1: a command that used this one would fail to connect.
    let unreachable = api::kubeconfig(dir.path(), "unreachable", "http://127.0.0.1:1", "bank");

    // The flag, before or after the subcommand; the file's context names the namespace.
    for args in [
        &["--kubeconfig", s(&good), "get", "rollouts"][..],
        &["get", "rollouts", "--kubeconfig", s(&good)],
        &["get", "rollouts", &format!("--kubeconfig={}", s(&good))],
    ] {
        let (code, out, err) = run(palisade(Some(&unreachable), args));
        assert_eq!(code, 0, "{args:?}: {err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].starts_with("NAME   ENFORCED") && lines[1].starts_with("web    main@a1b2c3d"), "{out}");
    }
    assert!(fake.reads().iter().all(|r| r.path == "/apis/palisade.dev/v1alpha1/namespaces/shop/policyrollouts"));

    // Without it, $KUBECONFIG is the one used.
    let (code, _, err) = run(palisade(Some(&unreachable), &["get", "rollouts"]));
    assert_eq!(code, 2);
    assert!(err.starts_with("error: "), "{err}");
    let (code, out, _) = run(palisade(Some(&good), &["get", "rollouts", "-n", "bank"]));
    assert_eq!(code, 0);
    assert!(out.lines().nth(1).is_some_and(|l| l.starts_with("ledger ")), "{out}");

    // A --kubeconfig that cannot be read is an error naming it, with no fallback to the
    // environment or the in-cluster account.
    let missing = dir.path().join("missing");
    let (code, out, err) = run(palisade(Some(&good), &["--kubeconfig", s(&missing), "get", "rollouts"]));
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.starts_with(&format!("error: --kubeconfig {}: ", missing.display())), "{err}");
    let (code, _, err) = run(palisade(None, &["describe", "rollout", "web", "--kubeconfig", s(&missing)]));
    assert_eq!(code, 2);
    assert!(err.contains(&format!("--kubeconfig {}", missing.display())), "{err}");
}

/// A running `palisade` whose stdout lines arrive on a channel.
struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Running {
    fn start(mut command: Command) -> Running {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run palisade");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// The next line; fails after 10 s.
    fn line(&self) -> String {
        let line = self.lines.recv_timeout(Duration::from_secs(10)).expect("a line within 10 s");
        eprintln!("palisade printed: {line}");
        line
    }

    /// No line for a while.
    fn quiet(&self) {
        if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            panic!("unexpected line {line:?}");
        }
    }

    /// Ends it; its stderr.
    fn stop(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let mut err = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        err
    }

    /// How it exited, and its stderr.
    fn finish(mut self) -> (i32, String) {
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (status.code().expect("exited"), err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An API server on a local port holding `objects` (collection, object), and a kubeconfig for it
/// in `dir` whose context is namespace shop.
fn cluster(runtime: &tokio::runtime::Runtime, dir: &Path, objects: Vec<(&str, Json)>) -> (FakeApi, PathBuf) {
    let fake = FakeApi::default();
    for (collection, object) in objects {
        fake.put(collection, object);
    }
    let address = api::listen(runtime, &fake);
    let kubeconfig = api::kubeconfig(dir, "kubeconfig", &format!("http://{address}"), "shop");
    (fake, kubeconfig)
}

fn report(node: &str, new_denies: u64) -> Json {
    json!({
        "apiVersion": "palisade.dev/v1alpha1",
        "kind": "PolicyAuditReport",
        "metadata": {"name": format!("web-{node}"), "namespace": "shop", "creationTimestamp": "2025-06-01T10:00:00Z",
                     "labels": {"palisade.dev/rollout": "web", "palisade.dev/node": node}},
        "spec": {"rollout": "web", "node": node, "candidateRevision": "rev-b2", "enforcedRevision": "rev-a1",
                 "totals": {"observedFlows": 20, "newDenies": new_denies}},
    })
}

/// Waits until the fake has been asked to watch `collection` (a GET with `watch=true`).
fn watched(fake: &FakeApi, collection: &str) -> palisade_fake_apiserver::Logged {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = fake.reads().into_iter().find(|r| r.path.ends_with(collection) && r.query().contains("watch=true"));
        if let Some(found) = found {
            return found;
        }
        assert!(Instant::now() < deadline, "no watch of {collection}: {:?}", fake.reads());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn watch_prints_a_line_for_each_change_made_in_the_api() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (fake, kubeconfig) = cluster(&runtime, dir.path(), vec![(ROLLOUTS, rollout("shop", "web"))]);
    let watch = Running::start(palisade(None, &["get", "rollouts", "-w", "--kubeconfig", s(&kubeconfig)]));
    assert_eq!(watch.line(), "NAME   ENFORCED       CANDIDATE   PHASE      NEW-DENIES   READY   AGE");
    assert!(watch.line().starts_with("web    main@a1b2c3d               Enforced   0            True    "));
    watched(&fake, "policyrollouts");

    // A new commit under audit: web's new line, aligned with the table.
    fake.update(ROLLOUTS, "shop", "web", |r| {
        r["status"]["phase"] = json!("Auditing");
        r["status"]["candidateRevision"] = json!({"id": "rev-b2", "commit": "b2c3d4e5", "display": "main@b2c3d4e"});
        r["status"]["newDenies"] = json!(2);
        r["status"]["conditions"][0]["status"] = json!("False");
    });
    assert!(watch.line().starts_with("web    main@a1b2c3d   main@b2c3d4e   Auditing   2            False   "));
    // Another namespace's rollout is not shown; a new one in shop is, and so is its deletion.
    fake.put(ROLLOUTS, rollout("bank", "ledger"));
    watch.quiet();
    fake.put(ROLLOUTS, rollout("shop", "api"));
    assert!(watch.line().starts_with("api    main@a1b2c3d               Enforced   0            True    "));
    fake.remove(ROLLOUTS, "shop", "api");
    assert!(watch.line().starts_with("api    main@a1b2c3d               Enforced"));
    // The server ends the watch: the next one goes on from where it was, repeating nothing.
    fake.expire(ROLLOUTS);
    watch.quiet();
    fake.update(ROLLOUTS, "shop", "web", |r| r["status"]["newDenies"] = json!(3));
    assert!(watch.line().starts_with("web    main@a1b2c3d   main@b2c3d4e   Auditing   3 "));

    // Nothing to list yet: the table's header comes with the first object.
    let watch = Running::start(palisade(Some(&kubeconfig), &["get", "revisions", "-w"]));
    watched(&fake, "policyrevisions");
    watch.quiet();
    let revision = json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "PolicyRevision",
        "metadata": {"name": "rev-b2", "namespace": "shop", "labels": {"palisade.dev/rollout": "web"}},
        "spec": {"rollout": "web", "commit": "b2c3d4e5", "display": "main@b2c3d4e",
                 "digest": format!("sha256:{}", "ab".repeat(32)), "policyCount": 3, "policies": []},
    });
    fake.put(REVISIONS, revision);
    assert_eq!(watch.line(), "NAME     ROLLOUT   REVISION       POLICIES   AGE");
    assert!(watch.line().starts_with("rev-b2   web       main@b2c3d4e   3          "));
    assert_eq!(watch.stop(), "No resources found in shop namespace.\n");
}

#[test]
fn watch_of_reports_with_a_selector_and_as_json() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let objects = vec![(REPORTS, report("node-a", 1)), (REPORTS, report("node-b", 0))];
    let (fake, kubeconfig) = cluster(&runtime, dir.path(), objects);
    let args = ["get", "reports", "--selector", "palisade.dev/node=node-b", "--watch", "-o", "wide"];
    let watch = Running::start(palisade(Some(&kubeconfig), &args));
    assert!(watch.line().starts_with("NAME         ROLLOUT   NODE     CANDIDATE   NEW-DENIES   ENFORCING   AGE "));
    assert!(watch.line().starts_with("web-node-b   web       node-b   rev-b2      0            rev-a1      "));
    let request = watched(&fake, "policyauditreports");
    assert!(request.query().contains("labelSelector=palisade.dev%2Fnode%3Dnode-b"), "{}", request.query());

    fake.update(REPORTS, "shop", "web-node-a", |r| r["spec"]["totals"]["newDenies"] = json!(5));
    watch.quiet();
    // Rewritten with the same figures: nothing; with new ones: a line.
    fake.update(REPORTS, "shop", "web-node-b", |r| r["spec"]["totals"]["observedFlows"] = json!(20));
    watch.quiet();
    fake.update(REPORTS, "shop", "web-node-b", |r| r["spec"]["totals"]["newDenies"] = json!(4));
    let line = watch.line();
    assert!(line.starts_with("web-node-b   web       node-b   rev-b2      4            rev-a1      "), "{line}");
    drop(watch);

    // As JSON: each object, then each change, as a whole object.
    let watch = Running::start(palisade(Some(&kubeconfig), &["get", "report", "web-node-a", "-w", "-o", "json"]));
    let mut text = String::new();
    let mut objects = Vec::new();
    while objects.len() < 2 {
        text.push_str(&watch.line());
        text.push('\n');
        if text.ends_with("}\n")
            && text.starts_with('{')
            && let Ok(object) = serde_json::from_str::<Json>(&text)
        {
            objects.push(object);
            text.clear();
            if objects.len() == 1 {
                watched(&fake, "policyauditreports");
                fake.update(REPORTS, "shop", "web-node-a", |r| r["spec"]["totals"]["newDenies"] = json!(6));
            }
        }
    }
    assert_eq!(objects[0]["spec"]["totals"]["newDenies"], 5);
    assert_eq!(objects[1]["spec"]["totals"]["newDenies"], 6);
    assert_eq!(objects[1]["kind"], "PolicyAuditReport");
}

/// Acts as the controller would on web's reconcile request: once `palisade` watches the
/// rollout, records the request as handled with `status`, then (if any) `then` after a moment.
fn controller(fake: &FakeApi, status: Json, then: Option<Json>) -> std::thread::JoinHandle<()> {
    let fake = fake.clone();
    std::thread::spawn(move || {
        watched(&fake, "policyrollouts");
        let web = fake.get(ROLLOUTS, "shop", "web").unwrap();
        let requested = web["metadata"]["annotations"]["reconcile.palisade.dev/requestedAt"].clone();
        assert!(requested.is_string(), "the request is an annotation: {web}");
        for status in std::iter::once(status).chain(then) {
            std::thread::sleep(Duration::from_millis(200));
            fake.update(ROLLOUTS, "shop", "web", |r| {
                r["status"] = status.clone();
                r["status"]["lastHandledReconcileAt"] = requested.clone();
                r["status"]["observedGeneration"] = r["metadata"]["generation"].clone();
            });
        }
    })
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Json {
    json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": "2025-06-01T10:00:00Z"})
}

fn status(phase: &str, conditions: Vec<Json>) -> Json {
    json!({"phase": phase, "enforcedRevision": {"id": "rev-a1", "commit": "a1b2c3d4", "display": "main@a1b2c3d"},
           "conditions": conditions})
}

#[test]
fn reconcile_wait_returns_once_the_rollout_is_ready() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (fake, kubeconfig) = cluster(&runtime, dir.path(), vec![(ROLLOUTS, rollout("shop", "web"))]);
    let auditing = status(
        "Auditing",
        vec![
            condition("Ready", "False", "AuditInProgress", "auditing main@b2c3d4e beside main@a1b2c3d"),
            condition("Reconciling", "True", "AuditInProgress", "auditing main@b2c3d4e beside main@a1b2c3d"),
        ],
    );
    let ready =
        status("Enforced", vec![condition("Ready", "True", "Enforced", "main@b2c3d4e is enforced on all 2 nodes")]);
    let acting = controller(&fake, auditing, Some(ready));
    let wait = Running::start(palisade(Some(&kubeconfig), &["reconcile", "web", "--wait"]));
    assert!(wait.line().starts_with("policyrollout.palisade.dev/web annotated: reconcile requested at "));
    assert_eq!(wait.line(), "waiting for policyrollout/web to be reconciled (timeout 5m)");
    assert_eq!(wait.line(), "policyrollout/web: waiting for the controller to act on the request");
    assert_eq!(wait.line(), "policyrollout/web: Auditing (AuditInProgress): auditing main@b2c3d4e beside main@a1b2c3d");
    assert_eq!(
        wait.line(),
        "policyrollout.palisade.dev/web reconciled: Enforced (Enforced): main@b2c3d4e is enforced on all 2 nodes"
    );
    acting.join().unwrap();
    assert_eq!(wait.finish(), (0, String::new()));
}

#[test]
fn reconcile_wait_fails_when_the_rollout_does_or_time_runs_out() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (fake, kubeconfig) = cluster(&runtime, dir.path(), vec![(ROLLOUTS, rollout("shop", "web"))]);
    let message = "3 unexpected new denies, above 0; still enforcing main@a1b2c3d";
    let blocked = status(
        "Blocked",
        vec![
            condition("Ready", "False", "NewDeniesAboveLimit", message),
            condition("Stalled", "True", "NewDeniesAboveLimit", message),
        ],
    );
    let acting = controller(&fake, blocked, None);
    let (code, out, err) = run(palisade(Some(&kubeconfig), &["reconcile", "web", "--wait", "--timeout", "1m"]));
    acting.join().unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.ends_with("waiting for policyrollout/web to be reconciled (timeout 1m)\npolicyrollout/web: waiting for the controller to act on the request\n"), "{out}");
    assert_eq!(err, format!("error: policyrollout/web failed: Blocked (NewDeniesAboveLimit): {message}\n"));

    // Nobody acts on the request.
    let started = Instant::now();
    let (code, out, err) = run(palisade(Some(&kubeconfig), &["reconcile", "web", "--wait", "--timeout", "1s"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(
        err,
        "error: timed out after 1s waiting for policyrollout/web: waiting for the controller to act on the request\n"
    );
    // A rollout that is not there: kubectl's error, before any wait.
    let (code, _, err) = run(palisade(Some(&kubeconfig), &["reconcile", "nope", "--wait"]));
    assert_eq!(
        (code, err.as_str()),
        (2, "error: policyrollouts.palisade.dev \"nope\" not found in namespace \"shop\"\n")
    );
}

fn deployment(image: &str, ready: i32) -> Json {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "palisade-controller", "namespace": "palisade-system"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "palisade-controller"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "palisade-controller"}},
                "spec": {"containers": [{"name": "controller", "image": image}]},
            },
        },
        "status": {"replicas": 2, "readyReplicas": ready},
    })
}

#[test]
fn version_reads_the_controllers_image_and_survives_no_cluster() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = format!("Client Version: {}\n", env!("CARGO_PKG_VERSION"));
    let (fake, kubeconfig) =
        cluster(&runtime, dir.path(), vec![(DEPLOYMENTS, deployment("registry.example.com/palisade:0.3.1", 1))]);
    let (code, out, _) = run(palisade(Some(&kubeconfig), &["version"]));
    assert_eq!(code, 0);
    assert_eq!(out, format!("{client}Controller Version: 0.3.1 (registry.example.com/palisade:0.3.1, 1/2 ready)\n"));
    let (_, out, _) = run(palisade(Some(&kubeconfig), &["version", "-o", "json"]));
    let printed: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (printed["clientVersion"].as_str(), printed["controllerVersion"].as_str()),
        (Some(env!("CARGO_PKG_VERSION")), Some("0.3.1"))
    );

    let (_, out, _) = run(palisade(Some(&kubeconfig), &["version", "--controller-namespace", "elsewhere"]));
    assert_eq!(
        out,
        format!(
            "{client}Controller Version: not installed: no deployment palisade-controller in namespace elsewhere (kubectl apply -k manifests/)\n"
        )
    );
    let before = fake.requests().len();
    let (code, out, _) = run(palisade(Some(&kubeconfig), &["version", "--client"]));
    assert_eq!((code, out.as_str()), (0, client.as_str()));
    assert_eq!(fake.requests().len(), before, "--client asks nothing");

    // No API server: said on one line, and still the client's version and exit 0.
    let unreachable = api::kubeconfig(dir.path(), "unreachable", "http://127.0.0.1:1", "shop");
    let (code, out, err) = run(palisade(None, &["version", "--kubeconfig", s(&unreachable)]));
    assert_eq!((code, err.as_str()), (0, ""));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], client.trim_end());
    assert!(
        lines[1].starts_with("Controller Version: unavailable: cannot reach the API server at http://127.0.0.1:1/: "),
        "{out}"
    );
}
