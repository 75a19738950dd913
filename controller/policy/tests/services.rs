//! Traffic to Services, judged at the backends it reaches (as Cilium does): `trace_service`, the
//! semantic diff of Service flows, `toServices` for Services with and without a selector, and
//! Services and EndpointSlices changing under a compiled policy.
use palisade_policy::cluster::EndpointSlice;
use palisade_policy::diff::{self, Change, FlowText};
use palisade_policy::lint::lint_with_cluster;
use palisade_policy::trace::{self, FlowEnd, FlowPort, ServiceFlowError, Verdict};
use palisade_policy::{Cluster, CompiledPolicy, Direction, EnforcementMode, ParseOptions, SourceFile, parse_policies};

/// Namespace shop: a client; Service web in front of web-0 (stable, `http` on 8080) and web-1
/// (canary, `http` on 8081); Service ext without a selector, its EndpointSlice at
/// 192.0.2.10:8443; Service idle, whose selector selects nothing.
const CLUSTER: &str = r#"
kind: Namespace
metadata: {name: shop}
---
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
status: {podIP: 10.200.1.1}
---
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web, track: stable}}
spec: {containers: [{ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.200.1.10}
---
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web, track: canary}}
spec: {containers: [{ports: [{name: http, containerPort: 8081}]}]}
status: {podIP: 10.200.1.11}
---
kind: Service
metadata: {name: web, namespace: shop, labels: {tier: front}}
spec: {selector: {app: web}, clusterIP: 10.200.250.1, ports: [{port: 80, targetPort: http}]}
---
kind: Service
metadata: {name: ext, namespace: shop, labels: {tier: external}}
spec: {clusterIP: 10.200.250.2, ports: [{name: https, port: 443, targetPort: 8443}]}
---
kind: EndpointSlice
metadata: {name: ext-1, namespace: shop, labels: {kubernetes.io/service-name: ext}}
endpoints: [{addresses: [192.0.2.10]}]
ports: [{name: https, port: 8443}]
---
kind: Service
metadata: {name: idle, namespace: shop}
spec: {selector: {app: nothing}, clusterIP: 10.200.250.3, ports: [{port: 80}]}
"#;

fn cluster() -> Cluster {
    Cluster::parse(&[SourceFile { name: "cluster.yaml", text: CLUSTER }]).expect("cluster")
}

/// The client's egress: `to` (flow-style YAML peers and ports) as its only rule.
fn client_egress(rule: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: client, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: client}}}}\n  egress:\n  - {rule}\n"
    )
}

fn engine(policies: &str) -> CompiledPolicy {
    let parsed = parse_policies(&[SourceFile { name: "p.yaml", text: policies }], &ParseOptions::default());
    assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
    CompiledPolicy::new(parsed.set, cluster(), EnforcementMode::Default)
}

const WEB_ON_8080: &str =
    "toEndpoints: [{matchLabels: {app: web}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]";

fn trace_service(engine: &CompiledPolicy, to: &str, port: &str) -> Result<trace::ServiceTrace, ServiceFlowError> {
    let from = FlowEnd::parse("shop/client").unwrap();
    trace::trace_service(engine, &from, &FlowEnd::parse(to).unwrap(), FlowPort::parse(port).unwrap(), None)
}

/// `(backend, port, verdict)` of each backend.
fn per_backend(service: &trace::ServiceTrace) -> Vec<(String, u16, Verdict)> {
    service.backends.iter().map(|b| (b.backend.clone(), b.port, b.trace.verdict)).collect()
}

#[test]
fn a_service_flow_is_judged_at_each_backend_on_its_translated_port() {
    let e = engine(&client_egress(WEB_ON_8080));
    let web = trace_service(&e, "svc/shop/web", "80/TCP").unwrap();
    // targetPort `http` is 8080 on web-0 and 8081 on web-1: the policy allows one, not the other.
    assert_eq!(
        per_backend(&web),
        [("shop/web-0".into(), 8080, Verdict::Allowed), ("shop/web-1".into(), 8081, Verdict::Denied)]
    );
    assert_eq!(web.verdict, Verdict::Denied, "kube-proxy may pick the denied backend");
    assert_eq!(web.backends[1].trace.egress.verdict, Verdict::Denied);

    let e = engine(&client_egress("toEndpoints: [{matchLabels: {app: web}}]"));
    let web = trace_service(&e, "svc/shop/web", "80/TCP").unwrap();
    assert_eq!(web.verdict, Verdict::Allowed);
    assert!(web.backends.iter().all(|b| b.trace.verdict == Verdict::Allowed));
}

#[test]
fn service_flows_that_cannot_be_traced_say_why() {
    let e = engine(&client_egress(WEB_ON_8080));
    let err = |to: &str, port: &str| trace_service(&e, to, port).unwrap_err().to_string();
    assert_eq!(err("svc/shop/nope", "80/TCP"), "no Service shop/nope in the cluster file");
    assert_eq!(err("svc/shop/web", "8080/TCP"), "Service shop/web has no port 8080/TCP (its ports: 80/TCP)");
    assert_eq!(err("svc/shop/web", "80/UDP"), "Service shop/web has no port 80/UDP (its ports: 80/TCP)");
    assert_eq!(
        err("svc/shop/idle", "80/TCP"),
        "Service shop/idle has no ready backends for 80/TCP: kube-proxy rejects traffic to it"
    );
    let from_service = trace::trace_service(
        &e,
        &FlowEnd::parse("svc/shop/web").unwrap(),
        &FlowEnd::parse("svc/shop/ext").unwrap(),
        FlowPort::parse("443/TCP").unwrap(),
        None,
    );
    assert_eq!(from_service.unwrap_err(), ServiceFlowError::ServiceSource("svc/shop/web".into()));
    // A plain trace refuses a Service at either end rather than judge its ClusterIP.
    let to = FlowEnd::parse("svc/shop/web").unwrap();
    let plain =
        trace::trace(&e, &FlowEnd::parse("shop/client").unwrap(), &to, FlowPort::parse("80/TCP").unwrap(), None);
    assert!(plain.unwrap_err().contains("svc/shop/web is a Service"));

    for bad in ["svc/shop", "svc//web", "svc/shop/", "svc/a/b/c"] {
        assert_eq!(FlowEnd::parse(bad).unwrap_err(), format!("{bad:?} is not svc/NAMESPACE/NAME"));
    }
    assert_eq!(FlowEnd::parse("svc/shop/web").unwrap().to_string(), "svc/shop/web");
}

#[test]
fn to_services_selects_the_endpoint_addresses_of_a_service_without_a_selector() {
    for by in [
        "k8sService: {serviceName: ext, namespace: shop}",
        "k8sServiceSelector: {selector: {matchLabels: {tier: external}}}",
    ] {
        let e = engine(&client_egress(&format!("toServices: [{{{by}}}]")));
        let verdict = |to: &str| {
            let to = FlowEnd::parse(to).unwrap();
            trace::trace(&e, &FlowEnd::parse("shop/client").unwrap(), &to, FlowPort::parse("8443/TCP").unwrap(), None)
                .unwrap()
                .verdict
        };
        assert_eq!(verdict("cidr:192.0.2.10"), Verdict::Allowed, "{by}");
        assert_eq!(verdict("cidr:192.0.2.11"), Verdict::Denied, "{by}: only the slice's addresses");
        let ext = trace_service(&e, "svc/shop/ext", "443/TCP").unwrap();
        assert_eq!(per_backend(&ext), [("192.0.2.10".into(), 8443, Verdict::Allowed)], "{by}");
        // Services with a selector stand for their pods: web's are not ext's.
        assert_eq!(trace_service(&e, "svc/shop/web", "80/TCP").unwrap().verdict, Verdict::Denied, "{by}");
    }
}

#[test]
fn every_selectorless_service_address_has_an_identity_whatever_the_policy_names() {
    let e = engine("");
    let id = e.identity_of_addr("192.0.2.10".parse().unwrap());
    let identity = e.identities().get(id).expect("a CIDR identity");
    assert_eq!(identity.labels.to_string(), "cidr:192.0.2.10/32,reserved:world,reserved:world-ipv4");
    assert_eq!(e.identity_of_addr("192.0.2.11".parse().unwrap()), palisade_common::IDENTITY_WORLD);
}

/// Every endpoint's entries in words (peers by labels), to compare compilations that number
/// identities differently.
fn entries(e: &CompiledPolicy) -> Vec<String> {
    let mut all: Vec<String> = e
        .endpoints()
        .flat_map(|ep| {
            Direction::BOTH
                .into_iter()
                .flat_map(move |d| ep.group.direction(d).entries())
                .map(move |entry| format!("{}: {}", ep.pod.key(), e.describe_entry(&entry)))
        })
        .collect();
    all.sort();
    all
}

fn ipcache(e: &CompiledPolicy) -> Vec<String> {
    let name = |id: u32| e.identities().get(id).map_or(id.to_string(), |i| i.labels.to_string());
    e.ipcache().into_iter().map(|(prefix, id)| format!("{prefix} {}", name(id))).collect()
}

#[test]
fn endpoint_slices_and_services_change_incrementally_as_a_fresh_compile_would() {
    let policies = client_egress("toServices: [{k8sService: {serviceName: ext, namespace: shop}}]");
    let mut e = engine(&policies);
    let fresh = |cluster: Cluster| {
        let parsed = parse_policies(&[SourceFile { name: "p.yaml", text: &policies }], &ParseOptions::default());
        CompiledPolicy::new(parsed.set, cluster, EnforcementMode::Default)
    };
    let allowed = |e: &CompiledPolicy, ip: &str| {
        let to = FlowEnd::Address(ip.parse().unwrap());
        let port = FlowPort::parse("8443/TCP").unwrap();
        trace::trace(e, &FlowEnd::parse("shop/client").unwrap(), &to, port, None).unwrap().verdict == Verdict::Allowed
    };
    let revision = e.group_of("shop", "client").unwrap().1.revision;

    // The gateway moves: its slice now points at 192.0.2.20.
    let mut slices = e.cluster.endpoint_slices.clone();
    slices[0].addresses = vec!["192.0.2.20".parse().unwrap()];
    e.set_endpoint_slices(slices.clone());
    assert!(allowed(&e, "192.0.2.20") && !allowed(&e, "192.0.2.10"));
    assert!(e.group_of("shop", "client").unwrap().1.revision > revision, "the client's entries changed");
    let mut moved = cluster();
    moved.endpoint_slices = slices;
    assert_eq!(entries(&e), entries(&fresh(moved.clone())));
    assert_eq!(ipcache(&e), ipcache(&fresh(moved.clone())));

    // A second slice for ext, then one for another Service.
    let mut slices = e.cluster.endpoint_slices.clone();
    slices.push(EndpointSlice {
        namespace: "shop".into(),
        name: "ext-2".into(),
        labels: [("kubernetes.io/service-name".to_string(), "ext".to_string())].into(),
        addresses: vec!["192.0.2.21".parse().unwrap()],
        ports: slices[0].ports.clone(),
    });
    e.set_endpoint_slices(slices.clone());
    assert!(allowed(&e, "192.0.2.20") && allowed(&e, "192.0.2.21"));
    moved.endpoint_slices = slices;
    assert_eq!(entries(&e), entries(&fresh(moved.clone())));

    // ext gains a selector: it stands for pods now, its slices' addresses lose their identities.
    let mut services = e.cluster.services.clone();
    let ext = services.iter_mut().find(|s| s.name == "ext").unwrap();
    ext.selector = Some([("app".to_string(), "web".to_string())].into());
    e.set_services(services.clone());
    assert!(!allowed(&e, "192.0.2.20"));
    let web0 = FlowEnd::parse("shop/web-0").unwrap();
    let to_web =
        trace::trace(&e, &FlowEnd::parse("shop/client").unwrap(), &web0, FlowPort::parse("8080/TCP").unwrap(), None);
    assert_eq!(to_web.unwrap().verdict, Verdict::Allowed);
    moved.services = services;
    assert_eq!(entries(&e), entries(&fresh(moved.clone())));
    assert_eq!(ipcache(&e), ipcache(&fresh(moved)));
    assert!(!ipcache(&e).iter().any(|entry| entry.contains("192.0.2.2")), "{:?}", ipcache(&e));
}

#[test]
fn a_diff_of_a_service_flow_names_the_backend_that_changed() {
    let both = engine(&client_egress(
        "toEndpoints: [{matchLabels: {app: web}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}, {port: \"8081\", protocol: TCP}]}]",
    ));
    let one = engine(&client_egress(WEB_ON_8080));
    let flow = FlowText { from: "shop/client".into(), to: "svc/shop/web".into(), port: "80/TCP".into() };
    let changes = diff::semantic_diff(&both, &one, &[flow.parse().unwrap()]).unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    let change = &changes[0];
    assert_eq!(change.change, Change::NewlyDenied);
    assert_eq!((change.to.as_str(), change.port.as_str()), ("svc/shop/web", "80/TCP"));
    assert_eq!((change.backend.as_deref(), change.backend_port), (Some("shop/web-1"), Some(8081)));

    let unknown = FlowText { from: "shop/client".into(), to: "svc/shop/nope".into(), port: "80/TCP".into() };
    let err = diff::semantic_diff(&both, &one, &[unknown.parse().unwrap()]).unwrap_err();
    assert_eq!(err, "no Service shop/nope in the cluster file");
    // No backend: kube-proxy rejects it under both revisions, nothing changes.
    let idle = FlowText { from: "shop/client".into(), to: "svc/shop/idle".into(), port: "80/TCP".into() };
    assert!(diff::semantic_diff(&both, &one, &[idle.parse().unwrap()]).unwrap().is_empty());
}

#[test]
fn lint_warns_about_to_services_naming_no_service_in_the_cluster() {
    let e = engine(&client_egress(
        "toServices: [{k8sService: {serviceName: gone, namespace: shop}}, {k8sServiceSelector: {selector: {matchLabels: {tier: nope}}}}, {k8sService: {serviceName: ext, namespace: shop}}]",
    ));
    let warnings: Vec<String> = lint_with_cluster(&e).iter().map(|d| d.message.clone()).collect();
    assert!(
        warnings.contains(&"Service shop/gone is not in the cluster: toServices selects no backend for it".to_string()),
        "{warnings:?}"
    );
    assert!(warnings.iter().any(|w| w.starts_with("no Service in the cluster matches")), "{warnings:?}");
    assert!(!warnings.iter().any(|w| w.contains("ext")), "{warnings:?}");
}
