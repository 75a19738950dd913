//! A cluster file's pod annotated `palisade.dev/outside-cluster: "true"` is a host outside the
//! cluster (local mode runs it as a namespace): not a pod to policy, its address `world` or the
//! CIDR identity a rule gives it.
mod common;

use common::trace_of;
use palisade_common as dp;
use palisade_policy::trace::{FlowEnd, FlowPort, Verdict, trace};
use palisade_policy::{Cluster, CompiledPolicy, EnforcementMode, ParseOptions, SourceFile, parse_policies};

const CLUSTER: &str = "kind: List
items:
- kind: Pod
  metadata: {name: client, namespace: shop, labels: {app: client}}
  status: {podIP: 10.200.1.1}
- kind: Pod
  metadata:
    name: api
    namespace: partner
    labels: {app: partner-api}
    annotations: {palisade.dev/outside-cluster: \"true\"}
  spec: {containers: [{ports: [{containerPort: 8080}]}]}
  status: {podIP: 10.200.99.10}
";

/// The client may reach port 8080 of whatever `peer` names.
fn client_egress_to(peer: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: client, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: client}}}}\n  egress:\n  - {peer}\n    toPorts: [{{ports: [{{port: \"8080\", protocol: TCP}}]}}]\n"
    )
}

fn cluster() -> Cluster {
    Cluster::parse(&[SourceFile { name: "cluster.yaml", text: CLUSTER }]).expect("cluster")
}

fn engine(policies: &str) -> CompiledPolicy {
    let parsed = parse_policies(&[SourceFile { name: "policies.yaml", text: policies }], &ParseOptions::default());
    assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
    CompiledPolicy::new(parsed.set, cluster(), EnforcementMode::Default)
}

#[test]
fn an_outside_host_is_kept_apart_from_the_pods() {
    let cluster = cluster();
    let pods: Vec<String> = cluster.pods.iter().map(|p| p.key()).collect();
    assert_eq!(pods, ["shop/client"]);
    let outside: Vec<(String, String)> =
        cluster.outside_hosts.iter().map(|p| (p.key(), p.ip().unwrap().to_string())).collect();
    assert_eq!(outside, [("partner/api".to_owned(), "10.200.99.10".to_owned())]);
    assert!(!cluster.namespaces.contains_key("partner"), "an outside host makes no namespace of the cluster");
    // No endpoint, and its address is the world's.
    let e = engine("");
    assert!(e.endpoint("partner", "api").is_none());
    assert_eq!(e.identity_of_addr("10.200.99.10".parse().unwrap()), dp::IDENTITY_WORLD);
}

#[test]
fn cidr_rules_match_an_outside_host_and_endpoint_selectors_do_not() {
    let to_outside = |policy: &str| trace_of(&engine(policy), "shop/client", "cidr:10.200.99.10", "8080/TCP", None);
    let cidr = to_outside(&client_egress_to("toCIDR: [10.200.99.10/32]"));
    assert_eq!(cidr.verdict, Verdict::Allowed, "{cidr:?}");
    let world = to_outside(&client_egress_to("toEntities: [world]"));
    assert_eq!(world.verdict, Verdict::Allowed, "{world:?}");
    let selector = "toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: partner, app: partner-api}}]";
    let selected = to_outside(&client_egress_to(selector));
    assert_eq!(selected.verdict, Verdict::Denied, "{selected:?}");
    // By name it is no pod: the error says how to trace it.
    let by_name = trace(
        &engine(""),
        &FlowEnd::parse("shop/client").unwrap(),
        &FlowEnd::parse("partner/api").unwrap(),
        FlowPort::parse("8080/TCP").unwrap(),
        None,
    );
    assert_eq!(
        by_name.unwrap_err(),
        "partner/api is a host outside the cluster (palisade.dev/outside-cluster): trace it as cidr:10.200.99.10"
    );
}

#[test]
fn a_bad_outside_cluster_value_names_the_file_and_annotation() {
    let text = CLUSTER.replace("\"true\"", "\"yes\"");
    let errors = Cluster::parse(&[SourceFile { name: "cluster.yaml", text: &text }]).unwrap_err();
    let error = errors[0].to_string();
    assert!(error.starts_with("cluster.yaml:6:"), "the line of the pod: {error}");
    assert!(
        error.contains(
            "pod api: metadata.annotations[\"palisade.dev/outside-cluster\"]: \"yes\" is not \"true\" or \"false\""
        ),
        "{error}"
    );
}
