//! Every scenario in `examples/` is enforced as its `flows.yaml` expects, through the same
//! loading and trace path as `palisade trace`. A flow's `verdict` is the policy's intent, L7
//! rules included; the examples' L7 rules are HTTP on TCP, which the node's proxy judges, so the
//! datapath does what policy says everywhere. A flow to a Service is checked at each of its
//! backends.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use palisade::files;
use palisade_policy::l7::KafkaRequest;
use palisade_policy::trace::{self, FlowEnd, FlowPort, HttpRequest, IpFamily, L7Request, Trace, Verdict};
use palisade_policy::yaml::{Limits, parse_documents};
use palisade_policy::{CompileOptions, CompiledPolicy};
use serde::Deserialize;

#[derive(Deserialize)]
struct FlowsFile {
    flows: Vec<ExpectedFlow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedFlow {
    from: String,
    to: String,
    port: String,
    http: Option<String>,
    #[serde(default)]
    headers: Vec<String>,
    /// `/package.Service/Method`: one gRPC call, to the policy an HTTP/2 POST of that path.
    grpc: Option<String>,
    /// A TLS connection whose ClientHello indicates this server name (`""`: none).
    tls_sni: Option<String>,
    /// `produce:TOPIC` or `consume:TOPIC`: one Kafka Produce or Fetch of that topic
    /// (`palisade local probe --kafka`).
    kafka: Option<String>,
    verdict: Verdict,
    /// For a flow to a Service: the verdict at each backend (pod, else address).
    backends: Option<BTreeMap<String, Verdict>>,
    /// `IPv6`: the flow is between the ends' IPv6 addresses (default `IPv4`).
    #[serde(default)]
    family: IpFamily,
    why: String,
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// The datapath (with the proxy at an HTTP redirect) follows the policy's intent: nothing in the
/// examples is `l7-unsupported`.
fn check_datapath(flow: &str, result: &Trace, failures: &mut Vec<String>) {
    let datapath = (result.intent, None);
    if (result.verdict, result.drop_reason()) != datapath {
        failures.push(format!(
            "{flow}: the datapath {:?} ({:?}), expected {datapath:?}",
            result.verdict,
            result.drop_reason()
        ));
    }
}

fn check_intent(flow: &str, expected: Verdict, why: &str, result: &Trace, failures: &mut Vec<String>) {
    if result.intent != expected {
        failures.push(format!(
            "{flow}: expected {expected:?}, got {:?} ({why})\n  egress: {}{}\n  ingress: {}{}",
            result.intent,
            result.egress.rule,
            result.egress.proxy.as_deref().map(|p| format!(" [{p}]")).unwrap_or_default(),
            result.ingress.rule,
            result.ingress.proxy.as_deref().map(|p| format!(" [{p}]")).unwrap_or_default(),
        ));
    }
}

fn check_scenario(name: &str) {
    let dir = examples_dir().join(name);
    let parsed = files::load_policies(&[dir.join("policies")]).unwrap();
    assert!(!parsed.has_errors(), "{name}: invalid policies: {:#?}", parsed.diagnostics);
    let cluster = files::load_cluster(&dir.join("cluster.yaml")).unwrap();
    // `node` is the node local mode runs the pods on, as the kernel and e2e levels take it.
    let host_node = cluster.main_node().map(str::to_owned);
    let engine = CompiledPolicy::with_options(parsed.set, cluster, CompileOptions { host_node, ..Default::default() });
    let text = std::fs::read_to_string(dir.join("flows.yaml")).unwrap();
    let doc = parse_documents(&text, &Limits::default()).unwrap().remove(0);
    let flows: FlowsFile = serde_json::from_value(doc.to_json()).unwrap();
    assert!(flows.flows.len() >= 10, "{name}: a scenario needs real coverage");
    let mut failures = Vec::new();
    for flow in &flows.flows {
        let from = FlowEnd::parse(&flow.from).unwrap();
        let to = FlowEnd::parse(&flow.to).unwrap();
        let port = FlowPort::parse(&flow.port).unwrap();
        let requests = [&flow.http, &flow.grpc, &flow.tls_sni, &flow.kafka];
        assert!(
            requests.iter().filter(|r| r.is_some()).count() <= 1,
            "{}: a flow is at most one of an HTTP request, a gRPC call, a TLS connection and a Kafka request",
            flow.why
        );
        let grpc_headers = || vec!["Content-Type: application/grpc".to_string()];
        let http = if let Some(request) = &flow.http {
            Some(L7Request::Http(HttpRequest::parse(request, &flow.headers).unwrap()))
        } else if let Some(method) = &flow.grpc {
            Some(L7Request::Http(HttpRequest::parse(&format!("POST {method}"), &grpc_headers()).unwrap()))
        } else if let Some(name) = &flow.tls_sni {
            Some(L7Request::Tls(Some(name.clone()).filter(|n| !n.is_empty())))
        } else {
            flow.kafka.as_ref().map(|request| L7Request::Kafka(KafkaRequest::parse(request, 0, None).unwrap()))
        };
        let family = flow.family;
        let label = format!(
            "{} -> {} {} {}{}",
            flow.from,
            flow.to,
            flow.port,
            requests.iter().find_map(|r| r.as_deref()).unwrap_or(""),
            if family == IpFamily::IPv6 { " (IPv6)" } else { "" }
        );
        if !matches!(to, FlowEnd::Service { .. }) {
            assert!(flow.backends.is_none(), "{label}: backends: is for flows to a Service");
            let result = trace::trace_in(&engine, &from, &to, port, http.as_ref(), Some(family))
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            for (end, address) in [(&from, result.from_address), (&to, result.to_address)] {
                if let (FlowEnd::Pod { .. }, Some(address)) = (end, address) {
                    assert!(family.holds(address), "{label}: {end} traced at {address}, not {family}");
                }
            }
            check_datapath(&label, &result, &mut failures);
            check_intent(&label, flow.verdict, &flow.why, &result, &mut failures);
            continue;
        }
        let expected =
            flow.backends.as_ref().unwrap_or_else(|| panic!("{label}: a flow to a Service lists its backends"));
        let service = trace::trace_service_in(&engine, &from, &to, port, http.as_ref(), Some(family))
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let traced: BTreeSet<&str> = service.backends.iter().map(|b| b.backend.as_str()).collect();
        assert_eq!(traced, expected.keys().map(String::as_str).collect(), "{label}: backends");
        if service.intent != flow.verdict {
            failures.push(format!(
                "{label}: the Service is {:?}, expected {:?} ({})",
                service.intent, flow.verdict, flow.why
            ));
        }
        for backend in &service.backends {
            let label = format!("{label} via {}:{}", backend.backend, backend.port);
            check_datapath(&label, &backend.trace, &mut failures);
            check_intent(&label, expected[&backend.backend], &flow.why, &backend.trace, &mut failures);
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} flows differ:\n{}",
        failures.len(),
        flows.flows.len(),
        failures.join("\n")
    );
}

#[test]
fn cloudnative_pg() {
    check_scenario("cloudnative-pg");
}

#[test]
fn frontend_backend() {
    check_scenario("frontend-backend");
}

#[test]
fn client_app_database() {
    check_scenario("client-app-database");
}

#[test]
fn deny_precedence() {
    check_scenario("deny-precedence");
}

#[test]
fn services() {
    check_scenario("services");
}

#[test]
fn dual_stack() {
    check_scenario("dual-stack");
}

#[test]
fn grpc() {
    check_scenario("grpc");
}

#[test]
fn tls_sni() {
    check_scenario("tls-sni");
}

#[test]
fn kafka() {
    check_scenario("kafka");
}

#[test]
fn host_firewall() {
    check_scenario("host-firewall");
}

/// Every directory of `examples/` with a `flows.yaml` has a test above.
#[test]
fn every_example_is_checked() {
    let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/examples.rs")).unwrap();
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.join("flows.yaml").is_file() {
            assert!(source.contains(&format!("check_scenario(\"{name}\")")), "examples/{name} has no test here");
        }
    }
}
