//! Services on real traffic. `palisade local up` translates each ClusterIP in the node namespace
//! with a kube-proxy nftables table, after the packet has passed the client's host-side veth: a
//! pod reaches a Service's backends through its ClusterIP, chosen at random; a Service without
//! backends refuses. Under an egress policy the datapath judges a Service connection by the
//! backend it reaches, as Cilium does: DNS through `kube-system/kube-dns` works under the usual
//! `k8s-app: kube-dns` allow, a Service whose backends the policy does not allow is dropped, and
//! the backend's ingress policy still applies; `toServices` selects a Service's backends by name
//! and by selector.
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use palisade_rollout::crd::Phase;
use support::*;

const NS: &str = "shop";
const NAME: &str = "shop";
const CLIENT: &str = "shop/client";
const WAIT: Duration = Duration::from_secs(60);
/// How long the agent may take to enforce what was promoted.
const CONVERGE: Duration = Duration::from_secs(20);

/// A pod of the cluster file: `labels` as YAML flow mapping content, `ports` as `53/UDP` etc.,
/// named like `udp53`.
fn pod(namespace: &str, name: &str, labels: &str, ip: &str, ports: &[&str]) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|p| {
            let (number, protocol) = p.split_once('/').unwrap_or((p, "TCP"));
            let name = protocol.to_lowercase();
            format!("{{name: {name}{number}, containerPort: {number}, protocol: {protocol}}}")
        })
        .collect();
    format!(
        "- apiVersion: v1
  kind: Pod
  metadata: {{name: {name}, namespace: {namespace}, labels: {{{labels}}}}}
  spec:
    nodeName: node-a
    containers: [{{name: main, ports: [{}]}}]
  status: {{podIP: {ip}}}
",
        ports.join(", ")
    )
}

/// A Service: `ports` as `PORT/PROTO>TARGET`, the target a number or a container port's name.
fn service(namespace: &str, name: &str, labels: &str, cluster_ip: &str, selector: &str, ports: &[&str]) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|p| {
            let (port, target) = p.split_once('>').unwrap();
            let (number, protocol) = port.split_once('/').unwrap();
            format!("{{name: s{number}, port: {number}, protocol: {protocol}, targetPort: {target}}}")
        })
        .collect();
    format!(
        "- apiVersion: v1
  kind: Service
  metadata: {{name: {name}, namespace: {namespace}, labels: {{{labels}}}}}
  spec:
    clusterIP: {cluster_ip}
    selector: {{{selector}}}
    ports: [{}]
",
        ports.join(", ")
    )
}

/// The cluster: a client; two api backends (8080, reached by name); a database; an admin pod;
/// CoreDNS behind kube-dns; and a Service that selects nothing.
fn cluster_file(dir: &std::path::Path) -> std::path::PathBuf {
    let items = [
        pod(NS, "client", "app: client", "10.200.42.2", &["7000"]),
        pod(NS, "api-0", "app: api", "10.200.42.10", &["8080"]),
        pod(NS, "api-1", "app: api, track: canary", "10.200.42.11", &["8080"]),
        pod(NS, "db", "app: db", "10.200.42.20", &["5432"]),
        pod(NS, "admin", "app: admin", "10.200.42.30", &["9000"]),
        pod("kube-system", "coredns", "k8s-app: kube-dns", "10.200.42.53", &["53/UDP", "53/TCP"]),
        service(NS, "api", "", "10.200.250.10", "app: api", &["80/TCP>tcp8080"]),
        service(NS, "db", "", "10.200.250.20", "app: db", &["5432/TCP>5432"]),
        service(NS, "admin", "exposure: internal", "10.200.250.30", "app: admin", &["9000/TCP>9000"]),
        service(NS, "empty", "", "10.200.250.99", "app: nothing", &["80/TCP>80"]),
        service("kube-system", "kube-dns", "", "10.200.250.53", "k8s-app: kube-dns", &["53/UDP>53", "53/TCP>53"]),
    ];
    let path = dir.join("cluster.yaml");
    std::fs::write(&path, format!("apiVersion: v1\nkind: List\nitems:\n{}", items.concat())).unwrap();
    path
}

/// Every pod of the namespace may talk to anything, and be talked to by anything.
const ALLOW_ALL: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-all, namespace: shop}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [all]}]
  egress: [{toEntities: [all]}]
";

/// The client may reach the api pods on 8080, the admin pod on 9000 and DNS, as users write it
/// for Cilium; nothing else. The admin pod admits only the api pods.
const CLIENT_EGRESS: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: '8080', protocol: TCP}]}]
  - toEndpoints: [{matchLabels: {app: admin}}]
    toPorts: [{ports: [{port: '9000', protocol: TCP}]}]
  - toEndpoints:
    - matchLabels:
        k8s:io.kubernetes.pod.namespace: kube-system
        k8s-app: kube-dns
    toPorts: [{ports: [{port: '53', protocol: ANY}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: admin, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: admin}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api}}]
";

/// The client may reach Service db by name and the Services labelled `exposure: internal` (admin)
/// by selector, through `toServices`; nothing else.
const TO_SERVICES: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toServices:
    - k8sService: {serviceName: db, namespace: shop}
    - k8sServiceSelector: {selector: {matchLabels: {exposure: internal}}, namespace: shop}
";

/// A candidate that admits only the admin pod to the canary api backend: through the api
/// Service, the client's connections to one of its two backends become new denies.
const CANARY_INGRESS: &str = "---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: canary, namespace: shop}
spec:
  endpointSelector: {matchLabels: {track: canary}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: admin}}]
";

/// Brings the cluster up, enforces `policy` and waits until the agent enforces it.
fn enforced(prefix: &str, policy: &str) -> (LocalCluster, Repo, tempfile::TempDir) {
    audited(prefix, policy, "0s")
}

/// [`enforced`], with every commit audited for at least `min_duration`.
fn audited(prefix: &str, policy: &str, min_duration: &str) -> (LocalCluster, Repo, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster_file(dir.path());
    let repo = Repo::new();
    repo.commit(&[("policy.yaml", policy)], "policy");
    let mut local = LocalCluster::up(prefix, &cluster);
    local.run(&rollout_yaml(NS, NAME, &repo, min_duration, ""));
    local.wait(NS, NAME, "the policy enforced", WAIT, |s| s.phase == Phase::Enforced);
    (local, repo, dir)
}

/// The backends that answered probes of `service` until `expected` of them did; fails with the
/// last probe and the log when they do not within [`CONVERGE`] (a probe may fail until the agent
/// has attached and enforces).
fn backends_answering(local: &LocalCluster, service: &str, port: &str, expected: usize) -> BTreeSet<String> {
    let mut answered = BTreeSet::new();
    let start = Instant::now();
    loop {
        let probe = local.probe(CLIENT, service, port);
        answered.extend(probe.answered_by().map(str::to_owned));
        if answered.len() >= expected {
            return answered;
        }
        if start.elapsed() > CONVERGE {
            panic!("{service} {port}: answered by {answered:?} only; last probe: {}\n{}", probe.stdout, local.log());
        }
    }
}

#[test]
fn a_pod_reaches_a_services_backends_through_its_cluster_ip_and_one_without_backends_refuses() {
    let (local, _repo, _dir) = enforced("e2s1-", ALLOW_ALL);
    let both = BTreeSet::from(["shop/api-0".to_owned(), "shop/api-1".to_owned()]);
    assert_eq!(backends_answering(&local, "svc/shop/api", "80/TCP", 2), both, "random choice reaches both");
    let probe = local.probe(CLIENT, "svc/shop/api", "80/TCP");
    assert!(probe.stdout.starts_with("shop/client -> svc/shop/api 10.200.250.10:80/TCP -> shop/api-"), "{probe:?}");
    assert!(probe.stdout.contains(":8080: connected ("), "{probe:?}");
    let empty = local.probe(CLIENT, "svc/shop/empty", "80/TCP");
    assert!(!empty.connected && empty.refused(), "no backends: refused, as kube-proxy rejects: {empty:?}");
    // From the node too (kube-proxy's output chain).
    assert!(local.probe("node", "svc/shop/db", "5432/TCP").connected);
    // Bad input: exit 2, naming what is wrong.
    let error = local.probe_error(CLIENT, "svc/shop/nope", "80/TCP");
    assert!(error.contains("no Service shop/nope (Services are svc/NAMESPACE/NAME)"), "{error}");
    let error = local.probe_error(CLIENT, "svc/shop/api", "8080/TCP");
    assert!(error.contains("Service shop/api has no port 8080/TCP (it has 80/TCP)"), "{error}");
}

#[test]
fn dns_through_the_kube_dns_service_works_under_an_egress_policy_allowing_kube_dns() {
    let (local, _repo, _dir) = enforced("e2s2-", CLIENT_EGRESS);
    assert!(
        local.eventually_reaches(CLIENT, "shop/db", "5432/TCP", false, CONVERGE),
        "the client's egress policy is enforced\n{}",
        local.log()
    );
    let dns = BTreeSet::from(["kube-system/coredns".to_owned()]);
    assert_eq!(backends_answering(&local, "svc/kube-system/kube-dns", "53/UDP", 1), dns, "{}", local.log());
    assert_eq!(backends_answering(&local, "svc/kube-system/kube-dns", "53/TCP", 1), dns);
}

#[test]
fn egress_policy_is_judged_by_the_backend_the_service_reaches() {
    let (local, _repo, _dir) = enforced("e2s3-", CLIENT_EGRESS);
    assert!(
        local.eventually_reaches(CLIENT, "shop/db", "5432/TCP", false, CONVERGE),
        "the client's egress policy is enforced\n{}",
        local.log()
    );
    let both = BTreeSet::from(["shop/api-0".to_owned(), "shop/api-1".to_owned()]);
    assert_eq!(backends_answering(&local, "svc/shop/api", "80/TCP", 2), both, "allowed backends\n{}", local.log());
    let db = local.probe(CLIENT, "svc/shop/db", "5432/TCP");
    assert!(db.timed_out(), "the db is not among the client's allowed peers: dropped\n{db:?}");
    let admin = local.probe(CLIENT, "svc/shop/admin", "9000/TCP");
    assert!(admin.timed_out(), "the client's egress allows admin, admin's ingress does not: dropped\n{admin:?}");
    assert!(local.probe("shop/api-0", "svc/shop/admin", "9000/TCP").connected, "the api pods may reach admin");
}

#[test]
fn to_services_selects_a_services_backends_by_name_and_by_selector() {
    let (local, _repo, _dir) = enforced("e2s4-", TO_SERVICES);
    assert!(
        local.eventually_reaches(CLIENT, "svc/shop/api", "80/TCP", false, CONVERGE),
        "the client's egress policy is enforced: api is not among its Services\n{}",
        local.log()
    );
    let db = BTreeSet::from(["shop/db".to_owned()]);
    assert_eq!(backends_answering(&local, "svc/shop/db", "5432/TCP", 1), db, "by name\n{}", local.log());
    let admin = BTreeSet::from(["shop/admin".to_owned()]);
    assert_eq!(backends_answering(&local, "svc/shop/admin", "9000/TCP", 1), admin, "by selector");
}

#[test]
fn a_candidate_denying_one_backend_of_a_service_is_blocked_by_the_audit() {
    let (local, repo, _dir) = audited("e2s5-", CLIENT_EGRESS, "4s");
    let both = BTreeSet::from(["shop/api-0".to_owned(), "shop/api-1".to_owned()]);
    assert_eq!(backends_answering(&local, "svc/shop/api", "80/TCP", 2), both, "enforced: both\n{}", local.log());
    repo.commit(&[("canary.yaml", CANARY_INGRESS)], "api: the canary admits only admin");
    // Traffic through the Service while the candidate is audited: kube-proxy picks both backends.
    let start = Instant::now();
    let status = loop {
        let status = local.rollout(NS, NAME).and_then(|r| r.status).unwrap_or_default();
        if status.phase == Phase::Blocked {
            break status;
        }
        assert!(start.elapsed() < WAIT, "never blocked: {status:#?}\n{}", local.log());
        assert!(local.probe(CLIENT, "svc/shop/api", "80/TCP").connected, "the enforced revision still allows both");
    };
    assert_eq!(status.new_denies, 1, "one flow, to the canary backend only: {status:#?}");
    let message = status.blocked.as_ref().map(|b| b.message.as_str()).unwrap_or_default();
    assert!(message.contains("8080"), "the denied flow is to the backend's port, not the Service's: {message}");
    assert_eq!(backends_answering(&local, "svc/shop/api", "80/TCP", 2), both, "enforcement unchanged");
}
