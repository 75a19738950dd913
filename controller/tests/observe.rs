//! `palisade observe --agent` against an agent's `/flows` that reviews bearer tokens with the
//! (fake) API server: the kubeconfig user's token is sent, refusals are clear errors.
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use palisade_agent::flow_access::FlowAccess;
use palisade_agent::observe::{FlowHub, ObservedFlow, authorized_router};
use palisade_fake_apiserver::{FakeApi, User};

#[path = "../../datapath/agent/tests/common/flows.rs"]
mod flows;
use flows::flow;

/// An agent's `/flows` on a local port, remembering a flow of shop and one of bank; token
/// `alice-token` is alice, who may get PolicyAuditReports in shop only.
fn agent(runtime: &tokio::runtime::Runtime) -> SocketAddr {
    // The fake's client buffers its requests on the runtime.
    let _entered = runtime.enter();
    let api = FakeApi::default();
    api.add_token("alice-token", User::named("alice"));
    api.authorize(|access| {
        access.user.username == "alice"
            && (access.verb.as_str(), access.resource.as_str()) == ("get", "policyauditreports")
            && access.namespace.as_deref() == Some("shop")
    });
    let hub = FlowHub::default();
    hub.publish(flow("shop"));
    hub.publish(flow("bank"));
    let router = authorized_router(hub, Arc::new(FlowAccess::new(api.client())));
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, router).await });
    address
}

/// Kubeconfig `name` whose current user is alice, authenticating as `user` says.
fn kubeconfig(dir: &Path, name: &str, user: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: shop\nclusters:\n- name: c\n  cluster: {{server: https://127.0.0.1:1}}\ncontexts:\n- name: shop\n  context: {{cluster: c, user: alice}}\nusers:\n- name: alice\n  user: {user}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn observe(kubeconfig: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_palisade"));
    command.arg("observe").args(args).env("KUBECONFIG", kubeconfig).env_remove("HOME");
    command
}

/// A refused observation: it fails at once, saying why on stderr.
fn refused(mut command: Command) -> String {
    let Output { status, stderr, .. } = command.output().expect("run palisade");
    assert!(!status.success());
    String::from_utf8(stderr).unwrap()
}

#[test]
fn observe_sends_the_kubeconfig_users_token_and_reports_refusals() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let url = format!("http://{}", agent(&runtime));
    let dir = tempfile::tempdir().unwrap();
    let alice = kubeconfig(dir.path(), "token", "{token: alice-token}");

    let mut child = observe(&alice, &["--agent", &url, "-n", "shop", "--last", "10", "-o", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run palisade");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let shown: ObservedFlow = serde_json::from_str(&line).expect(&line);
    assert_eq!(shown.destination.namespace.as_deref(), Some("shop"));

    let everything = refused(observe(&alice, &["--agent", &url, "--last", "10"]));
    assert!(everything.contains("the agent refused the flows asked for (HTTP/1.1 403 Forbidden)"), "{everything}");
    assert!(everything.contains(r#"user "alice" may not get policyauditreports.palisade.dev cluster-wide"#));

    let token_file = dir.path().join("forged-token");
    std::fs::write(&token_file, "forged\n").unwrap();
    let token_file = token_file.to_str().unwrap();
    let forged = refused(observe(&alice, &["--agent", &url, "-n", "shop", "--token-file", token_file]));
    assert!(forged.contains("the agent did not accept the token (HTTP/1.1 401 Unauthorized)"), "{forged}");
    assert!(forged.contains("--token-file PATH"), "{forged}");

    let certificate = kubeconfig(dir.path(), "certificate", "{client-certificate-data: Zm9v, client-key-data: Zm9v}");
    let message = refused(observe(&certificate, &["--agent", &url, "-n", "shop"]));
    assert!(message.contains(r#"user "alice" authenticates with a client certificate"#), "{message}");
    assert!(message.contains("--token-file PATH"), "{message}");
    // --kubeconfig is the one read, whatever $KUBECONFIG says.
    let flag = ["--agent", &url, "-n", "shop", "--kubeconfig", certificate.to_str().unwrap()];
    let message = refused(observe(&alice, &flag));
    assert!(message.contains(r#"user "alice" authenticates with a client certificate"#), "{message}");
}
