//! Every scenario in `examples/` on real traffic: its policies are committed to a Git
//! repository, `palisade local run` syncs and enforces them, and every flow of its `flows.yaml`
//! between two pods is made as a real connection whose fate must be the expected verdict; a flow
//! to a Service goes through local mode's kube-proxy, repeatedly, until every backend has shown
//! its own verdict (kube-proxy picks one at random). A flow with an `http:` request sends it
//! (`palisade local probe --http`) to a pod that answers HTTP, through the node's L7 proxy where
//! a rule redirects: allowed is any answer but a 403. A flow with `family: IPv6` is made between
//! the pods' IPv6 addresses (`palisade local probe --ip-family 6`; its echo is ICMPv6). Flows to
//! or from addresses and entities outside the pods, and ICMP types other than echo, are left to
//! the policy engine's and the datapath's own scenario tests.
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use palisade_policy::yaml::{Limits, parse_documents};
use palisade_rollout::crd::Phase;
use support::*;

struct Flow {
    from: String,
    to: String,
    port: String,
    allowed: bool,
    /// The one L7 request the flow is, as `palisade local probe` makes it: `--http` and
    /// `GET /path`, `--grpc` and `/package.Service/Method`, `--tls-sni` and a server name (`""`:
    /// none) in a ClientHello, or `--kafka` and `produce:TOPIC` or `consume:TOPIC`.
    request: Option<(&'static str, String)>,
    /// For a flow to a Service: each backend pod's expected verdict.
    backends: BTreeMap<String, bool>,
    /// `4`, or `6` for `family: IPv6`: the `--ip-family` of its probes.
    family: &'static str,
}

/// The flows a real connection between two pods can check.
fn flows(dir: &Path) -> Vec<Flow> {
    let text = std::fs::read_to_string(dir.join("flows.yaml")).unwrap();
    let doc = parse_documents(&text, &Limits::default()).unwrap().remove(0).to_json();
    let field = |flow: &serde_json::Value, name: &str| flow[name].as_str().unwrap_or_default().to_owned();
    doc["flows"]
        .as_array()
        .expect("flows.yaml has a `flows` list")
        .iter()
        .map(|flow| Flow {
            from: field(flow, "from"),
            to: field(flow, "to"),
            port: match field(flow, "port").as_str() {
                "icmp/8" | "icmpv6/128" => "icmp".to_owned(),
                port => port.to_owned(),
            },
            family: if field(flow, "family") == "IPv6" { "6" } else { "4" },
            allowed: field(flow, "verdict") == "allowed",
            request: [("http", "--http"), ("grpc", "--grpc"), ("tls_sni", "--tls-sni"), ("kafka", "--kafka")]
                .into_iter()
                .find_map(|(field, flag)| flow[field].as_str().map(|value| (flag, value.to_owned()))),
            backends: flow["backends"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(backend, verdict)| (backend.clone(), verdict == "allowed"))
                .collect(),
        })
        .filter(|f| !f.from.contains(':') && !f.to.contains(':'))
        // A Service backend outside the pods (a selector-less Service's address) has nothing
        // listening in local mode.
        .filter(|f| f.backends.keys().all(|backend| backend.contains('/')))
        .filter(|f| f.port == "icmp" || f.port.ends_with("/TCP") || f.port.ends_with("/UDP"))
        .collect()
}

fn scenario(name: &str, prefix: &str) {
    let dir = examples().join(name);
    let repo = Repo::new();
    repo.commit_dir(&dir.join("policies"), "policies");
    let mut local = LocalCluster::up(prefix, &dir.join("cluster.yaml"));
    local.run(&rollout_yaml("palisade-system", name, &repo, "0s", "  scope: Cluster\n"));
    local.wait("palisade-system", name, "the policies to be enforced", Duration::from_secs(60), |s| {
        s.phase == Phase::Enforced
    });
    let flows = flows(&dir);
    assert!(flows.len() >= 5, "{name}: only {} flows can be checked with real traffic", flows.len());
    let mut wrong = Vec::new();
    for flow in &flows {
        if flow.to.starts_with("svc/") {
            wrong.extend(through_service(&local, flow));
            continue;
        }
        let reached = match &flow.request {
            Some((flag, request)) => answered(&local, flow, (flag, request)),
            None => local.reaches_in(flow.family, &flow.from, &flow.to, &flow.port),
        };
        if reached != flow.allowed {
            wrong.push(format!(
                "{} -> {} {}{}{}: expected {}, got {}",
                flow.from,
                flow.to,
                flow.port,
                flow.request.as_ref().map(|(_, r)| format!(" {r}")).unwrap_or_default(),
                if flow.family == "6" { " (IPv6)" } else { "" },
                verdict(flow.allowed),
                verdict(reached)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{name}: {} of {} flows disagree:\n{}\nlog:\n{}",
        wrong.len(),
        flows.len(),
        wrong.join("\n"),
        local.log()
    );
    eprintln!("{name}: {} flows checked on real traffic", flows.len());
}

/// Whether `request` (`--http` and a request, `--grpc` and a method, `--tls-sni` and a server
/// name, or `--kafka` and a role and topic) gets an answer other than 403, a gRPC OK, a
/// ClientHello through, or a Kafka response without error.
fn answered(local: &LocalCluster, flow: &Flow, (flag, request): (&str, &str)) -> bool {
    let args = [
        "--from",
        &flow.from,
        "--to",
        &flow.to,
        "--port",
        &flow.port,
        flag,
        request,
        "--timeout",
        "2s",
        "--ip-family",
        flow.family,
    ];
    local.local_probe(&args).status.code() == Some(0)
}

/// Probes a Service until each backend has shown its verdict: every allowed backend answered,
/// and a denied backend showed as a probe that got nowhere (no backend answers a dropped one).
fn through_service(local: &LocalCluster, flow: &Flow) -> Option<String> {
    const ATTEMPTS: usize = 16;
    let (mut answered, mut dropped) = (BTreeSet::new(), 0);
    for _ in 0..ATTEMPTS {
        let probe = local.probe_in(flow.family, &flow.from, &flow.to, &flow.port);
        match probe.answered_by() {
            Some(backend) => {
                answered.insert(backend.to_owned());
            }
            None => dropped += 1,
        }
    }
    let allowed: BTreeSet<String> = flow.backends.iter().filter(|(_, a)| **a).map(|(b, _)| b.clone()).collect();
    let expect_drops = flow.backends.values().any(|&a| !a);
    (answered != allowed || (dropped > 0) != expect_drops).then(|| {
        format!(
            "{} -> {} {}{}: expected answers from {allowed:?}{}, got answers from {answered:?} and {dropped} of {ATTEMPTS} probes dropped",
            flow.from,
            flow.to,
            flow.port,
            if flow.family == "6" { " (IPv6)" } else { "" },
            if expect_drops { " and some probes dropped" } else { "" }
        )
    })
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

#[test]
fn cloudnative_pg() {
    scenario("cloudnative-pg", "e2p-");
}

#[test]
fn frontend_backend() {
    scenario("frontend-backend", "e2f-");
}

#[test]
fn client_app_database() {
    scenario("client-app-database", "e2c-");
}

#[test]
fn services() {
    scenario("services", "e2s-");
}

#[test]
fn deny_precedence() {
    scenario("deny-precedence", "e2d-");
}

/// IPv6 flows, allowed and denied, as real IPv6 packets through the agent and the kernel.
#[test]
fn dual_stack() {
    scenario("dual-stack", "e2v-");
}

/// gRPC calls over h2c, judged method by method by the node's L7 proxy.
#[test]
fn grpc() {
    scenario("grpc", "e2g-");
}

/// TLS connections, passed through or reset by the node's L7 proxy on their ClientHello's
/// server name.
#[test]
fn tls_sni() {
    scenario("tls-sni", "e2t-");
}

/// Kafka produce and fetch requests, forwarded to a Kafka pod or answered
/// TOPIC_AUTHORIZATION_FAILED by the node's L7 proxy.
#[test]
fn kafka() {
    scenario("kafka", "e2k-");
}

/// The node's own traffic under a host policy: pods to the node namespace (its host-network
/// pods' ports) and the node to pods.
#[test]
fn host_firewall() {
    scenario("host-firewall", "e2x-");
}
