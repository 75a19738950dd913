//! The `palisade` binary against the in-memory API server on a local port, reached through a
//! kubeconfig as a cluster would be: `--kubeconfig` and its precedence over `$KUBECONFIG`.
use std::path::Path;
use std::process::{Command, Output};

use palisade_fake_apiserver::FakeApi;
use palisade_fake_apiserver::collections::ROLLOUTS;
use serde_json::{Value as Json, json};

#[path = "common/api.rs"]
mod api;

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
