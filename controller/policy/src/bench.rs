//! A deterministic synthetic cluster and policy set for `palisade bench policy` and the agent's
//! benchmark (`make bench-agent`): 200 namespaces, 10,000 pods sharing 5,000 identities (two pods
//! per label set), and 1,000 policies of the kinds real clusters carry. Everything is YAML text,
//! so it goes through the real parsers.
use std::fmt::Write;

pub const NAMESPACES: usize = 200;
pub const APPS_PER_NAMESPACE: usize = 5;
pub const VARIANTS_PER_APP: usize = 5;
pub const PODS_PER_IDENTITY: usize = 2;
/// Namespaces per cluster file; keeps each `kind: List` well under the YAML node limit.
const NAMESPACES_PER_FILE: usize = 20;

const TEAMS: [&str; 8] = ["payments", "checkout", "catalog", "search", "identity", "billing", "shipping", "analytics"];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];

pub struct Workload {
    /// (file name, YAML text)
    pub cluster_files: Vec<(String, String)>,
    pub policy_files: Vec<(String, String)>,
}

pub fn namespace_name(n: usize) -> String {
    match n {
        0 => "kube-system".into(),
        1 => "monitoring".into(),
        _ => format!("{}-{}-{n}", TEAMS[n % TEAMS.len()], ENVS[n % ENVS.len()]),
    }
}

fn namespace_labels(n: usize) -> Vec<(String, String)> {
    let mut labels = vec![("kubernetes.io/metadata.name".to_string(), namespace_name(n))];
    if n >= 2 {
        labels.push(("team".into(), TEAMS[n % TEAMS.len()].into()));
        labels.push(("env".into(), ENVS[n % ENVS.len()].into()));
    } else {
        labels.push(("team".into(), "platform".into()));
        labels.push(("env".into(), "prod".into()));
    }
    labels
}

/// App name, tier and container ports (name, number, protocol) of app `a` in namespace `n`.
pub fn app(n: usize, a: usize) -> (&'static str, &'static str, Vec<(&'static str, u16, &'static str)>) {
    match (n, a) {
        (0, 0) => {
            ("kube-dns", "system", vec![("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("dns-metrics", 9153, "TCP")])
        }
        (0, 1) => ("metrics-server", "system", vec![("https", 10250, "TCP")]),
        (0, 2) => ("konnectivity-agent", "system", vec![("health", 8093, "TCP")]),
        (0, 3) => ("csi-driver", "system", vec![("healthz", 9808, "TCP")]),
        (0, _) => ("cluster-autoscaler", "system", vec![("metrics", 9090, "TCP")]),
        (1, 0) => ("prometheus", "monitoring", vec![("web", 9091, "TCP")]),
        (1, 1) => ("alertmanager", "monitoring", vec![("web-am", 9093, "TCP")]),
        (1, 2) => ("grafana", "monitoring", vec![("http", 8080, "TCP")]),
        (1, 3) => ("kube-state-metrics", "monitoring", vec![("metrics", 9090, "TCP")]),
        (1, _) => ("blackbox-exporter", "monitoring", vec![("probe", 9115, "TCP")]),
        (_, 0) => ("frontend", "web", vec![("http", 8080, "TCP"), ("metrics", 9090, "TCP")]),
        (_, 1) => ("api", "backend", vec![("http", 8080, "TCP"), ("grpc", 9000, "TCP"), ("metrics", 9090, "TCP")]),
        (_, 2) => ("worker", "backend", vec![("metrics", 9090, "TCP")]),
        (_, 3) => ("cache", "cache", vec![("redis", 6379, "TCP")]),
        _ => ("db", "data", vec![("postgres", 5432, "TCP"), ("pg-metrics", 9187, "TCP")]),
    }
}

/// The pod address of global pod index `i`: 10.200.x.y, y in 1..=254.
pub fn pod_ip(i: usize) -> String {
    format!("10.200.{}.{}", i / 254, i % 254 + 1)
}

pub fn generate() -> Workload {
    Workload { cluster_files: cluster_files(), policy_files: policy_files() }
}

fn cluster_files() -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut pod_index = 0;
    for chunk in 0..NAMESPACES.div_ceil(NAMESPACES_PER_FILE) {
        let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
        let namespaces = chunk * NAMESPACES_PER_FILE..((chunk + 1) * NAMESPACES_PER_FILE).min(NAMESPACES);
        if chunk == 0 {
            for node in 0..4 {
                let _ = write!(
                    y,
                    "- apiVersion: v1\n  kind: Node\n  metadata:\n    name: node-{node}\n  status:\n    addresses:\n    - type: InternalIP\n      address: 10.201.0.{}\n",
                    node + 10
                );
            }
        }
        for n in namespaces {
            let ns = namespace_name(n);
            let _ = write!(y, "- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: {ns}\n    labels:\n");
            for (k, v) in namespace_labels(n) {
                let _ = writeln!(y, "      {k}: {v}");
            }
            for a in 0..APPS_PER_NAMESPACE {
                let (name, tier, ports) = app(n, a);
                for variant in 0..VARIANTS_PER_APP {
                    for replica in 0..PODS_PER_IDENTITY {
                        let pod = format!(
                            "{name}-v{variant}-{:08x}-{replica}",
                            (n * 7919 + a * 131 + variant) * 2654435761 % 0xffff_ffff
                        );
                        let _ = write!(
                            y,
                            "- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: {pod}\n    namespace: {ns}\n    labels:\n      app: {name}\n      tier: {tier}\n      version: v{variant}\n      team: {}\n      pod-template-hash: \"h{:x}\"\n",
                            if n >= 2 { TEAMS[n % TEAMS.len()] } else { "platform" },
                            pod_index * 31 + 7
                        );
                        if n == 0 {
                            let _ = writeln!(y, "      k8s-app: {name}");
                        }
                        let _ = write!(
                            y,
                            "  spec:\n    serviceAccountName: {name}\n    nodeName: node-{}\n    containers:\n    - name: main\n      ports:\n",
                            pod_index % 4
                        );
                        for (port_name, port, protocol) in &ports {
                            let _ = write!(
                                y,
                                "      - name: {port_name}\n        containerPort: {port}\n        protocol: {protocol}\n"
                            );
                        }
                        let _ = write!(y, "  status:\n    podIP: {}\n", pod_ip(pod_index));
                        pod_index += 1;
                    }
                }
            }
        }
        files.push((format!("cluster-{chunk:02}.yaml"), y));
    }
    files
}

fn policy_files() -> Vec<(String, String)> {
    let mut files = Vec::new();
    for n in 0..NAMESPACES {
        let docs: Vec<String> = (0..5).filter_map(|k| namespaced_policy(n, k, 0)).collect();
        files.push((format!("policies/{}.yaml", namespace_name(n)), docs.join("---\n")));
    }
    files.push(("policies/clusterwide.yaml".into(), clusterwide_policies().join("---\n")));
    files
}

/// Policy `k` of namespace `n`; `variant` > 0 gives a changed version of the same policy
/// object (same kind, namespace and name; different rules).
pub fn namespaced_policy(n: usize, k: usize, variant: usize) -> Option<String> {
    let ns = namespace_name(n);
    let team = TEAMS[(n + 3) % TEAMS.len()];
    let port = 8080 + variant;
    let cnp = |name: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n"
        )
    };
    let knp = |name: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n"
        )
    };
    let dns = "    - toEndpoints:\n        - matchLabels:\n            k8s:io.kubernetes.pod.namespace: kube-system\n            k8s-app: kube-dns\n      toPorts:\n        - ports:\n            - port: \"53\"\n              protocol: ANY\n          rules:\n            dns:\n              - matchPattern: \"*\"\n";
    Some(match (n, k) {
        // kube-system: default deny, DNS upstream to the world, the API server for metrics-server.
        (0, 0) => knp("default-deny") + "  podSelector: {}\n  policyTypes:\n    - Ingress\n",
        (0, 1) => {
            cnp("kube-dns-upstream")
                + "  endpointSelector:\n    matchLabels:\n      k8s-app: kube-dns\n  egress:\n    - toEntities:\n        - world\n      toPorts:\n        - ports:\n            - port: \"53\"\n              protocol: ANY\n"
        }
        (0, 2) => {
            cnp("metrics-server")
                + &format!(
                    "  endpointSelector:\n    matchLabels:\n      app: metrics-server\n  egress:\n    - toEntities:\n        - kube-apiserver\n        - remote-node\n        - host\n      toPorts:\n        - ports:\n            - port: \"{}\"\n              protocol: TCP\n    - toEntities:\n        - remote-node\n      toPorts:\n        - ports:\n            - port: \"10250\"\n              protocol: TCP\n",
                    443 + variant
                )
        }
        (0, _) => return None,
        // monitoring: ingress default deny, Prometheus scrapes every pod's metrics port.
        (1, 0) => knp("default-deny") + "  podSelector: {}\n  policyTypes:\n    - Ingress\n",
        (1, 1) => {
            cnp("prometheus-scrape")
                + &format!(
                    "  endpointSelector:\n    matchLabels:\n      app: prometheus\n  egress:\n    - toEndpoints:\n        - matchExpressions:\n            - key: k8s:io.kubernetes.pod.namespace\n              operator: Exists\n      toPorts:\n        - ports:\n            - port: metrics\n              protocol: TCP\n            - port: \"{}\"\n              protocol: TCP\n{dns}",
                    9187 + variant
                )
        }
        (1, _) => return None,
        // Every other namespace: default deny both ways, DNS + API server egress, same-namespace
        // app rules, cross-namespace ingress via namespace labels, and one of four extras.
        (_, 0) => knp("default-deny") + "  podSelector: {}\n  policyTypes:\n    - Ingress\n    - Egress\n",
        (_, 1) => {
            cnp("allow-dns")
                + &format!(
                    "  endpointSelector: {{}}\n  egress:\n{dns}    - toEntities:\n        - kube-apiserver\n      toPorts:\n        - ports:\n            - port: \"{}\"\n              protocol: TCP\n",
                    443 + variant
                )
        }
        (_, 2) => {
            cnp("app-rules").replace("spec:\n", "")
                + &format!(
                    "specs:\n    - endpointSelector:\n        matchLabels:\n          app: api\n      ingress:\n        - fromEndpoints:\n            - matchLabels:\n                app: frontend\n          toPorts:\n            - ports:\n                - port: http\n                  protocol: TCP\n        - fromEndpoints:\n            - matchLabels:\n                app: worker\n          toPorts:\n            - ports:\n                - port: \"9000\"\n                  protocol: TCP\n      egress:\n        - toEndpoints:\n            - matchLabels:\n                app: db\n          toPorts:\n            - ports:\n                - port: \"5432\"\n                  protocol: TCP\n        - toEndpoints:\n            - matchLabels:\n                app: cache\n          toPorts:\n            - ports:\n                - port: redis\n                  protocol: TCP\n    - endpointSelector:\n        matchLabels:\n          app: db\n      ingress:\n        - fromEndpoints:\n            - matchExpressions:\n                - key: app\n                  operator: In\n                  values: [api, worker]\n          toPorts:\n            - ports:\n                - port: postgres\n                  protocol: TCP\n        - fromEndpoints:\n            - matchLabels:\n                k8s:io.kubernetes.pod.namespace: monitoring\n                app: prometheus\n          toPorts:\n            - ports:\n                - port: \"{}\"\n                  protocol: TCP\n    - endpointSelector:\n        matchLabels:\n          app: frontend\n      egress:\n        - toEndpoints:\n            - matchLabels:\n                app: api\n          toPorts:\n            - ports:\n                - port: \"{port}\"\n                  protocol: TCP\n                - port: \"9000\"\n                  protocol: TCP\n",
                    9187 + variant
                )
        }
        (_, 3) => {
            knp("cross-namespace")
                + &format!(
                    "  podSelector:\n    matchLabels:\n      app: api\n  policyTypes:\n    - Ingress\n    - Egress\n  ingress:\n    - from:\n        - namespaceSelector:\n            matchLabels:\n              team: {team}\n          podSelector:\n            matchLabels:\n              app: frontend\n        - namespaceSelector:\n            matchLabels:\n              kubernetes.io/metadata.name: monitoring\n      ports:\n        - protocol: TCP\n          port: {port}\n        - protocol: TCP\n          port: grpc\n    - from:\n        - ipBlock:\n            cidr: 192.168.{n}.0/24\n            except:\n              - 192.168.{n}.128/25\n      ports:\n        - protocol: TCP\n          port: 8443\n  egress:\n    - to:\n        - namespaceSelector:\n            matchLabels:\n              env: prod\n          podSelector:\n            matchLabels:\n              tier: backend\n              team: {team}\n      ports:\n        - protocol: TCP\n          port: 8080\n          endPort: {}\n    - to:\n        - ipBlock:\n            cidr: 172.{}.0.0/16\n      ports:\n        - protocol: TCP\n          port: 5432\n",
                    8090 + variant,
                    16 + n % 16
                )
        }
        (_, _) => match n % 4 {
            0 => {
                cnp("frontend-edge")
                    + &format!(
                        "  endpointSelector:\n    matchLabels:\n      app: frontend\n  ingress:\n    - fromEntities:\n        - world\n      toPorts:\n        - ports:\n            - port: \"{port}\"\n              protocol: TCP\n  ingressDeny:\n    - fromEndpoints:\n        - matchLabels:\n            k8s:io.cilium.k8s.namespace.labels.env: dev\n  egressDeny:\n    - toCIDR:\n        - 169.254.169.254/32\n"
                    )
            }
            1 => {
                cnp("api-l7")
                    + &format!(
                        "  endpointSelector:\n    matchLabels:\n      app: api\n  ingress:\n    - fromEndpoints:\n        - matchLabels:\n            app: frontend\n      toPorts:\n        - ports:\n            - port: \"{port}\"\n              protocol: TCP\n          rules:\n            http:\n              - method: GET\n                path: \"/api/.*\"\n              - method: POST\n                path: \"/api/v1/orders\"\n                headers:\n                  - \"X-Tenant: {ns}\"\n"
                    )
            }
            2 => {
                cnp("worker-egress")
                    + &format!(
                        "  endpointSelector:\n    matchLabels:\n      app: worker\n  egress:\n    - toCIDRSet:\n        - cidr: 10.0.0.0/8\n          except:\n            - 10.200.0.0/16\n      toPorts:\n        - ports:\n            - port: \"443\"\n              protocol: TCP\n    - toEntities:\n        - world\n      toPorts:\n        - ports:\n            - port: \"{}\"\n              endPort: 65535\n              protocol: TCP\n{}",
                        1024 + variant,
                        if n % 20 == 2 {
                            "    - toEntities:\n        - cluster\n      toPorts:\n        - ports:\n            - port: \"9090\"\n              protocol: TCP\n"
                        } else {
                            ""
                        }
                    )
            }
            _ => {
                cnp("cache-access")
                    + &format!(
                        "  endpointSelector:\n    matchLabels:\n      app: cache\n  ingress:\n    - fromEndpoints:\n        - matchExpressions:\n            - key: app\n              operator: In\n              values: [api, worker]\n            - key: version\n              operator: NotIn\n              values: [v{}]\n      toPorts:\n        - ports:\n            - port: \"6379\"\n              protocol: TCP\n  egressDeny:\n    - toEntities:\n        - world\n",
                        4 - variant % 5
                    )
            }
        },
    })
}

fn clusterwide_policies() -> Vec<String> {
    let ccnp = |name: &str| {
        format!("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n")
    };
    vec![
        ccnp("allow-prometheus-scrape")
            + "  endpointSelector: {}\n  ingress:\n    - fromEndpoints:\n        - matchLabels:\n            k8s:io.kubernetes.pod.namespace: monitoring\n            app: prometheus\n      toPorts:\n        - ports:\n            - port: metrics\n              protocol: TCP\n",
        ccnp("deny-cloud-metadata")
            + "  endpointSelector: {}\n  egressDeny:\n    - toCIDR:\n        - 169.254.169.254/32\n",
        ccnp("allow-health")
            + "  endpointSelector: {}\n  ingress:\n    - fromEntities:\n        - health\n        - remote-node\n",
        ccnp("kube-dns-from-cluster")
            + "  endpointSelector:\n    matchLabels:\n      k8s:io.kubernetes.pod.namespace: kube-system\n      k8s-app: kube-dns\n  ingress:\n    - fromEntities:\n        - cluster\n      toPorts:\n        - ports:\n            - port: \"53\"\n              protocol: ANY\n",
        ccnp("deny-dev-to-prod-db")
            + "  endpointSelector:\n    matchLabels:\n      k8s:io.cilium.k8s.namespace.labels.env: prod\n      app: db\n  ingressDeny:\n    - fromEndpoints:\n        - matchLabels:\n            k8s:io.cilium.k8s.namespace.labels.env: dev\n",
    ]
}
