//! Local mode's L7 pods through the CLI, without any policy: `palisade local up` on a cluster
//! file with HTTP ports, a DNS pod and a host outside the cluster, then `palisade local probe
//! --http` and `--dns` as a person runs them.
mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Output;

use palisade_agent::observe::{FlowVerdict, ObservedFlow};
use palisade_netsim::http::HttpOutcome;
use palisade_policy::l7::HttpRequest;
use support::LocalCluster;

fn cluster() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("netsim/tests/l7.cluster.yaml")
}

fn printed(output: &Output) -> (Option<i32>, String, String) {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

#[test]
fn probe_sends_http_and_resolves_names_through_the_pods_resolver() {
    let local = LocalCluster::up("ple1-", &cluster());
    let probe = |args: &[&str]| printed(&local.local_probe(args));

    // An HTTP request to an undeclared HTTP port, a header echoed back, the default Host.
    let (code, stdout, stderr) = probe(&[
        "--from",
        "ops/dns",
        "--to",
        "shop/web",
        "--port",
        "9090",
        "--http",
        "GET /api?v=1",
        "--header",
        "X-Trace: abc",
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("ops/dns -> shop/web 10.200.1.10:9090/TCP GET /api?v=1: HTTP 200 OK"), "{stdout}");
    assert!(stdout.contains("\nx-echo-x-trace: abc\n"), "{stdout}");
    assert!(stdout.contains("\nx-echo-host: 10.200.1.10:9090\n"), "{stdout}");
    assert!(stdout.ends_with("\n\npalisade-http shop/web GET /api?v=1\n"), "{stdout}");

    // The host outside the cluster, with a Host header of its own.
    let (code, stdout, _) = probe(&[
        "--from",
        "shop/web",
        "--to",
        "partner/api",
        "--port",
        "443/TCP",
        "--http",
        "POST /orders",
        "--header",
        "Host: api.partner.example",
    ]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("\nx-echo-host: api.partner.example\n")
            && stdout.ends_with("palisade-http partner/api POST /orders\n"),
        "{stdout}"
    );

    // A 403, as an L7 proxy denies a request: exit 1 (a server of the test's own in the pod).
    let listener =
        palisade_netsim::in_netns("ple1-shop.web", || std::net::TcpListener::bind("0.0.0.0:8403")).unwrap().unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0; 4096];
        let _ = stream.read(&mut request).unwrap();
        let denied = "HTTP/1.1 403 Forbidden\r\ncontent-length: 14\r\nconnection: close\r\n\r\nAccess denied\n";
        stream.write_all(denied.as_bytes()).unwrap();
    });
    let (code, stdout, _) =
        probe(&["--from", "ops/dns", "--to", "shop/web", "--port", "8403", "--http", "DELETE /admin"]);
    server.join().unwrap();
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.starts_with("ops/dns -> shop/web 10.200.1.10:8403/TCP DELETE /admin: HTTP 403 Forbidden\n"),
        "{stdout}"
    );

    // No connection: exit 1. HTTP on UDP or ICMP, or a bad request: exit 2.
    let (code, stdout, _) = probe(&["--from", "ops/dns", "--to", "shop/web", "--port", "8081", "--http", "GET /"]);
    assert_eq!((code, stdout.as_str()), (Some(1), "ops/dns -> shop/web 10.200.1.10:8081/TCP GET /: refused\n"));
    for port in ["53/UDP", "icmp"] {
        let (code, _, stderr) = probe(&["--from", "shop/web", "--to", "ops/dns", "--port", port, "--http", "GET /"]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("--http needs a TCP port"), "{stderr}");
    }
    let (code, _, stderr) = probe(&["--from", "ops/dns", "--to", "shop/web", "--port", "8080", "--http", "GET nopath"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--http: \"GET nopath\" is not \"METHOD /path\""), "{stderr}");

    // DNS through the pod's resolver: the addresses, one per line; NXDOMAIN exits 1.
    let (code, stdout, stderr) = probe(&["--from", "shop/web", "--dns", "api.partner.example"]);
    assert_eq!((code, stdout.as_str()), (Some(0), "10.200.99.10\n10.200.99.11\n"), "{stderr}");
    let (code, stdout, _) = probe(&["--from", "shop/web", "--dns", "nope.partner.example"]);
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "shop/web -> ops/dns 10.200.3.2:53/UDP nope.partner.example: NXDOMAIN\n");
    // A pod without a resolver, and --dns with --to or --port: exit 2.
    let (code, _, stderr) = probe(&["--from", "ops/dns", "--dns", "api.partner.example"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("pod ops/dns has no palisade.dev/resolver annotation"), "{stderr}");
    for extra in [["--to", "ops/dns"], ["--port", "53/UDP"]] {
        let (code, _, stderr) = probe(&[&["--from", "shop/web", "--dns", "api.partner.example"], &extra[..]].concat());
        assert_eq!(code, Some(2), "{stderr}");
    }
}

/// The web pod's ingress: the client may GET `/public` on 8080 (HTTP rules), and use 9090.
const HTTP_RULES: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: '8080', protocol: TCP}]
      rules:
        http:
        - {method: GET, path: '/public(/.*)?'}
        - {method: GET, path: /admin, headers: ['X-Admin: yes']}
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: '9090', protocol: TCP}]}]
";

/// The client's egress: HTTP to the web pod's 9090 on GETs only (an egress L7 rule).
const EGRESS_RULES: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: '9090', protocol: TCP}]
      rules:
        http: [{method: GET}]
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: '8080', protocol: TCP}]}]
";

const POLICY_CLUSTER: &str = "apiVersion: v1
kind: List
items:
- kind: Pod
  metadata:
    name: web
    namespace: shop
    labels: {app: web}
    annotations: {palisade.dev/http-ports: \"8080,9090\"}
  spec: {containers: [{ports: [{containerPort: 8080}, {containerPort: 9090}]}]}
  status: {podIP: 10.200.41.10}
- kind: Pod
  metadata: {name: client, namespace: shop, labels: {app: client}}
  spec: {containers: [{ports: [{containerPort: 7000}]}]}
  status: {podIP: 10.200.41.20}
";

/// Sends `requests` (`(method path, header)`) on one keep-alive connection from the client pod
/// to the web pod's 8080; the status of each reply, `None` for no reply.
fn statuses_on_one_connection(netns: &str, requests: &[(&str, &[&str])]) -> Vec<Option<u16>> {
    let requests: Vec<HttpRequest> = requests
        .iter()
        .map(|(request, headers)| {
            HttpRequest::parse(request, &headers.iter().map(ToString::to_string).collect::<Vec<_>>()).unwrap()
        })
        .collect();
    let outcomes = palisade_netsim::http::requests(
        netns,
        std::net::Ipv4Addr::new(10, 200, 41, 10),
        8080,
        &requests,
        std::time::Duration::from_secs(3),
    )
    .unwrap();
    outcomes
        .iter()
        .map(|outcome| match outcome {
            HttpOutcome::Response { status, .. } => Some(status.as_u16()),
            HttpOutcome::Failed(_) => None,
        })
        .collect()
}

/// A local cluster (`cluster`, its namespaces prefixed with `prefix`) running rollout shop/shop
/// of a repository with `files` committed, once it enforces them.
fn enforced(
    prefix: &str,
    cluster: &str,
    files: &[(&str, &str)],
    min_duration: &str,
) -> (tempfile::TempDir, support::Repo, LocalCluster) {
    enforced_with(prefix, cluster, files, min_duration, &[])
}

/// [`enforced`], with more flags for `palisade local run`.
fn enforced_with(
    prefix: &str,
    cluster: &str,
    files: &[(&str, &str)],
    min_duration: &str,
    flags: &[&str],
) -> (tempfile::TempDir, support::Repo, LocalCluster) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.yaml");
    std::fs::write(&path, cluster).unwrap();
    let repo = support::Repo::new();
    repo.commit(files, "the policies");
    let mut local = LocalCluster::up(prefix, &path);
    local.run_with(&support::rollout_yaml("shop", "shop", &repo, min_duration, ""), flags);
    local.wait("shop", "shop", "the policies enforced", std::time::Duration::from_secs(60), |s| {
        s.phase == palisade_rollout::crd::Phase::Enforced
    });
    (dir, repo, local)
}

#[test]
fn http_rules_are_enforced_request_by_request_by_the_proxy() {
    let files = [("web.yaml", HTTP_RULES), ("client.yaml", EGRESS_RULES)];
    let (_dir, repo, mut local) = enforced("ple2-", POLICY_CLUSTER, &files, "0s");
    let probe = |local: &LocalCluster, port: &str, request: &str, header: &[&str]| {
        let mut args = vec!["--from", "shop/client", "--to", "shop/web", "--port", port, "--http", request];
        for h in header {
            args.extend(["--header", h]);
        }
        printed(&local.local_probe(&args))
    };
    // Enforced once the agent has converged and its proxy has the policy.
    let serving = |local: &LocalCluster| until(|| probe(local, "8080", "GET /public/x", &[]).0 == Some(0));
    // Ingress HTTP rules: an allowed path is answered by the pod, through the proxy.
    serving(&local);
    let (code, stdout, stderr) = probe(&local, "8080", "GET /public/x", &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}\n{}", local.log());
    assert!(stdout.contains("HTTP 200 OK") && stdout.ends_with("palisade-http shop/web GET /public/x\n"), "{stdout}");
    let (code, stdout, _) = probe(&local, "8080", "GET /private", &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("HTTP 403 Forbidden") && stdout.ends_with("Access denied\r\n"), "{stdout}");
    let (code, stdout, _) = probe(&local, "8080", "POST /public", &[]);
    assert_eq!(code, Some(1), "the method is part of the rule: {stdout}");
    // A header rule: /admin only with `X-Admin: yes`.
    assert_eq!(probe(&local, "8080", "GET /admin", &[]).0, Some(1));
    assert_eq!(probe(&local, "8080", "GET /admin", &["X-Admin: yes"]).0, Some(0));

    // Requests are judged one by one on one keep-alive connection.
    let requests: [(&str, &[&str]); 4] =
        [("GET /public", &[]), ("GET /private", &[]), ("GET /public/again", &[]), ("GET /admin", &["X-Admin: yes"])];
    assert_eq!(
        statuses_on_one_connection("ple2-shop.client", &requests),
        vec![Some(200), Some(403), Some(200), Some(200)],
    );

    // Observers see each request the proxy judged, as Hubble shows L7 flows.
    let http = |flow: &ObservedFlow, method: &str, url: &str, status: u16| {
        flow.l7.as_ref().and_then(|l7| l7.http.as_ref()).is_some_and(|h| {
            (h.method.as_str(), h.url.as_str(), h.status, h.protocol.as_str()) == (method, url, status, "HTTP/1.1")
        })
    };
    let denied = |f: &ObservedFlow| http(f, "GET", "/private", 403) && f.verdict == FlowVerdict::Dropped;
    let allowed = |f: &ObservedFlow| http(f, "GET", "/public/again", 200) && f.verdict == FlowVerdict::Forwarded;
    let flows = local.observed(&["--type", "l7"], std::time::Duration::from_secs(10), |flows| {
        flows.iter().any(denied) && flows.iter().any(allowed)
    });
    let shown = format!("{flows:#?}");
    let private = flows.iter().find(|f| denied(f)).unwrap_or_else(|| panic!("no 403 for GET /private: {shown}"));
    assert_eq!((private.source.name(), private.destination.name()), ("shop/client".into(), "shop/web".into()));
    assert_eq!((private.port, private.protocol.as_str(), private.direction.as_str()), (8080, "TCP", "ingress"));
    assert_eq!(private.drop_reason.as_deref(), Some("policy-denied"));
    assert!(private.l7.as_ref().is_some_and(|l7| l7.latency_ns > 0), "{private:?}");
    assert!(flows.iter().any(allowed), "{shown}");
    assert!(flows.iter().all(|f| f.l7.is_some()), "--type l7 shows only L7 flows: {shown}");

    // The agent restarts. While it is down the kernel keeps enforcing L4, and the redirected
    // port fails closed (no proxy judges it); back, its proxy serves again.
    local.kill();
    let undeclared = local.probe("shop/client", "shop/web", "7000/TCP");
    assert!(undeclared.timed_out(), "L4 default deny holds while the agent is down: {undeclared:?}");
    assert_eq!(probe(&local, "8080", "GET /public/x", &[]).0, Some(1), "no proxy: the redirect fails closed");
    local.run(&support::rollout_yaml("shop", "shop", &repo, "0s", ""));
    serving(&local);
    assert_eq!(probe(&local, "8080", "GET /public/x", &[]).0, Some(0), "the proxy resumed\n{}", local.log());
    assert_eq!(probe(&local, "8080", "GET /private", &[]).0, Some(1), "and judges again");

    // Egress HTTP rules, on the client's side: GET passes, DELETE is refused.
    assert_eq!(probe(&local, "9090", "GET /anything", &[]).0, Some(0), "{}", local.log());
    let (code, stdout, _) = probe(&local, "9090", "DELETE /anything", &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("HTTP 403"), "{stdout}");
}

/// Commits `file` (name, contents) with `message` and waits (60 s) for rollout shop/shop to
/// block it, checking on every round that `live` still passes: a candidate under audit changes
/// nothing. `describe` must show `denied`, the live request the candidate would deny.
fn blocks_candidate(
    local: &LocalCluster,
    repo: &support::Repo,
    file: (&str, &str),
    message: &str,
    live: impl Fn() -> bool,
    denied: &str,
) {
    let commit = repo.commit(&[file], message);
    let blocked = local.wait("shop", "shop", "the candidate Blocked", std::time::Duration::from_secs(60), |status| {
        assert!(live(), "still enforced meanwhile\n{}", local.log());
        status.phase == palisade_rollout::crd::Phase::Blocked
    });
    assert!(blocked.candidate_revision.is_some_and(|c| c.display.ends_with(&commit)), "the new commit is blocked");
    let (ok, out) = local.cli(&["describe", "rollout", "shop", "-n", "shop"]);
    assert!(ok, "{out}");
    assert!(out.contains(denied), "describe shows {denied:?}:\n{out}");
    assert!(live(), "a blocked candidate changes nothing");
}

/// Waits (30 s) until `ready`: a proxy refuses everything until the agent gave it the rules.
fn until(ready: impl Fn() -> bool) {
    support::eventually(std::time::Duration::from_secs(30), ready);
}

#[test]
fn a_candidate_that_would_403_a_live_request_blocks_with_that_request_shown() {
    let (_dir, repo, local) = enforced("ple3-", POLICY_CLUSTER, &[("web.yaml", HTTP_RULES)], "6s");

    // The candidate drops the /public rule: live GET /public requests would get 403s.
    let stricter = HTTP_RULES.replace("        - {method: GET, path: '/public(/.*)?'}\n", "");
    let probe = || {
        printed(&local.local_probe(&[
            "--from",
            "shop/client",
            "--to",
            "shop/web",
            "--port",
            "8080",
            "--http",
            "GET /public",
        ]))
    };
    // Still enforced meanwhile: the live request keeps its 200.
    let live = || probe().0 == Some(0);
    blocks_candidate(&local, &repo, ("web.yaml", &stricter), "web: only /admin", live, "8080/TCP GET /public");
}

/// The client may ask the DNS pod for names under `partner.example` (DNS rules), and connect
/// to the addresses of `api.partner.example` on 443 (`toFQDNs`): the addresses its proxy
/// learned from the answers it let through.
const FQDN_RULES: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: '53', protocol: ANY}]
      rules:
        dns: [{matchPattern: '*.partner.example'}]
  - toFQDNs: [{matchName: api.partner.example}]
    toPorts: [{ports: [{port: '443', protocol: TCP}]}]
";

const FQDN_CLUSTER: &str = "apiVersion: v1
kind: List
items:
- kind: Pod
  metadata:
    name: client
    namespace: shop
    labels: {app: client}
    annotations: {palisade.dev/resolver: shop/dns}
  status: {podIP: 10.200.42.20}
- kind: Pod
  metadata:
    name: dns
    namespace: shop
    labels: {app: dns}
    annotations:
      palisade.dev/dns-records: \"api.partner.example=10.200.99.10, www.partner.example=10.200.99.20\"
      palisade.dev/dns-ttl: \"1\"
  spec: {containers: [{ports: [{containerPort: 53, protocol: UDP}, {containerPort: 53, protocol: TCP}]}]}
  status: {podIP: 10.200.42.53}
- kind: Pod
  metadata:
    name: api
    namespace: partner
    annotations: {palisade.dev/outside-cluster: \"true\", palisade.dev/http-ports: \"443\"}
  status: {podIP: 10.200.99.10}
- kind: Pod
  metadata:
    name: www
    namespace: partner
    annotations: {palisade.dev/outside-cluster: \"true\", palisade.dev/http-ports: \"443\"}
  status: {podIP: 10.200.99.20}
";

#[test]
fn dns_rules_refuse_names_and_to_fqdns_opens_the_addresses_of_allowed_answers() {
    use std::time::{Duration, Instant};
    let (_dir, repo, mut local) = enforced("ple4-", FQDN_CLUSTER, &[("client.yaml", FQDN_RULES)], "0s");
    let resolve =
        |local: &LocalCluster, name: &str| printed(&local.local_probe(&["--from", "shop/client", "--dns", name]));
    let https = |local: &LocalCluster, to: &str| {
        let args = ["--from", "shop/client", "--to", to, "--port", "443", "--http", "GET /", "--timeout", "1s"];
        printed(&local.local_probe(&args)).0
    };
    // Before any lookup, toFQDNs selects nothing: the API is closed.
    assert_eq!(https(&local, "partner/api"), Some(1), "{}", local.log());

    // A name the DNS rules do not match is refused by the proxy, never asked upstream.
    let start = Instant::now();
    let refused = loop {
        let (code, stdout, stderr) = resolve(&local, "evil.example.org");
        if code == Some(1) || start.elapsed() > Duration::from_secs(20) {
            break (code, stdout, stderr);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        (refused.0, refused.1.as_str()),
        (Some(1), "shop/client -> shop/dns 10.200.42.53:53/UDP evil.example.org: REFUSED\n"),
        "{}\n{}",
        refused.2,
        local.log()
    );

    // An allowed name is answered by the DNS pod, through the proxy; the very next connection
    // to its address passes: the answer reached the client only once the address was known.
    let (code, stdout, stderr) = resolve(&local, "api.partner.example");
    assert_eq!((code, stdout.as_str()), (Some(0), "10.200.99.10\n"), "{stderr}\n{}", local.log());
    assert_eq!(https(&local, "partner/api"), Some(0), "the first connection after the lookup\n{}", local.log());
    // The record's TTL is 1 s, but learned addresses live for the minimum TTL (an hour).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(https(&local, "partner/api"), Some(0), "kept past the record's TTL");

    // An allowed lookup of a name toFQDNs does not select opens nothing.
    let (code, stdout, _) = resolve(&local, "www.partner.example");
    assert_eq!((code, stdout.as_str()), (Some(0), "10.200.99.20\n"));
    assert_eq!(https(&local, "partner/www"), Some(1), "toFQDNs does not select www.partner.example");

    // Observers see the queries, their answers and the proxy's verdicts.
    let dns = |flow: &ObservedFlow| flow.l7.as_ref().and_then(|l7| l7.dns.clone());
    let answered = |flows: &[ObservedFlow], query: &str, rcode: &str| {
        flows.iter().find(|f| dns(f).is_some_and(|d| d.query == query && d.rcode == rcode)).cloned()
    };
    let flows = local.observed(&["--type", "l7", "--pod", "shop/client"], Duration::from_secs(10), |flows| {
        answered(flows, "evil.example.org", "REFUSED").is_some()
            && answered(flows, "api.partner.example", "NOERROR").is_some()
    });
    let shown = format!("{flows:#?}");
    let refused = answered(&flows, "evil.example.org", "REFUSED").unwrap_or_else(|| panic!("{shown}"));
    assert_eq!((refused.verdict, refused.port, refused.protocol.as_str()), (FlowVerdict::Dropped, 53, "UDP"));
    assert_eq!((refused.direction.as_str(), refused.destination.name()), ("egress", "shop/dns".to_string()));
    let api = answered(&flows, "api.partner.example", "NOERROR").unwrap_or_else(|| panic!("{shown}"));
    assert_eq!(api.verdict, FlowVerdict::Forwarded);
    assert_eq!(dns(&api).unwrap().answers, vec![std::net::Ipv4Addr::new(10, 200, 99, 10)]);

    // The agent restarts: what it learned is restored, so the address stays open without a
    // new lookup (pods cache their answers).
    local.kill();
    local.run(&support::rollout_yaml("shop", "shop", &repo, "0s", ""));
    // Converged once its DNS proxy has the policy again (it refuses every name before).
    until(|| resolve(&local, "www.partner.example").0 == Some(0));
    assert_eq!(https(&local, "partner/api"), Some(0), "restored after a restart\n{}", local.log());
}

#[test]
fn to_fqdns_closes_a_learned_address_once_its_answer_expires() {
    use std::time::Duration;
    let files = [("client.yaml", FQDN_RULES)];
    let (_dir, _repo, local) = enforced_with("ple5-", FQDN_CLUSTER, &files, "0s", &["--fqdn-min-ttl", "1s"]);
    let resolve = || printed(&local.local_probe(&["--from", "shop/client", "--dns", "api.partner.example"])).0;
    let https = || {
        let args =
            ["--from", "shop/client", "--to", "partner/api", "--port", "443", "--http", "GET /", "--timeout", "1s"];
        printed(&local.local_probe(&args)).0
    };
    // Answered once the proxy has the policy (it refuses every name before).
    until(|| resolve() == Some(0));
    assert_eq!(https(), Some(0), "open right after the lookup\n{}", local.log());
    // The record's TTL and the minimum are 1 s: past them the address is forgotten, and closed.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(https(), Some(1), "closed once the answer expired\n{}", local.log());
    assert_eq!(resolve(), Some(0));
    assert_eq!(https(), Some(0), "open again after a new lookup");
}

/// The web pod's ingress for gRPC on 8080: the client may call `shop.Cart`'s `GetCart` and any
/// `List...` method (HTTP rules on gRPC's `/package.Service/Method` paths).
const GRPC_RULES: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: '8080', protocol: TCP}]
      rules:
        http:
        - {method: POST, path: /shop.Cart/GetCart}
        - {method: POST, path: '/shop.Cart/List.*'}
";

#[test]
fn grpc_calls_are_judged_by_method_and_a_candidate_denying_a_live_one_blocks() {
    use std::time::Duration;
    let (_dir, repo, local) = enforced("ple6-", POLICY_CLUSTER, &[("web.yaml", GRPC_RULES)], "6s");
    let call = |method: &str| {
        printed(&local.local_probe(&["--from", "shop/client", "--to", "shop/web", "--port", "8080", "--grpc", method]))
    };
    until(|| call("/shop.Cart/GetCart").0 == Some(0));
    // Allowed calls reach the pod over h2c, through the proxy; a denied one gets what Envoy
    // answers: PERMISSION_DENIED.
    let (code, stdout, stderr) = call("/shop.Cart/GetCart");
    assert_eq!(code, Some(0), "{stdout}{stderr}\n{}", local.log());
    assert_eq!(stdout, "shop/client -> shop/web 10.200.41.10:8080/TCP gRPC /shop.Cart/GetCart: grpc-status 0\n");
    assert_eq!(call("/shop.Cart/ListItems").0, Some(0));
    let (code, stdout, _) = call("/shop.Cart/DeleteCart");
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.ends_with(": grpc-status 7 (Access denied)\n"), "{stdout}");
    let (code, _, stderr) = call("shop.Cart/GetCart");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("expected /package.Service/Method"), "{stderr}");

    // Observers see the call as an HTTP/2 request.
    let denied = |f: &ObservedFlow| {
        f.verdict == FlowVerdict::Dropped
            && f.l7.as_ref().and_then(|l7| l7.http.as_ref()).is_some_and(|h| {
                (h.method.as_str(), h.url.as_str(), h.protocol.as_str())
                    == ("POST", "/shop.Cart/DeleteCart", "HTTP/2.0")
            })
    };
    let flows = local.observed(&["--type", "l7"], Duration::from_secs(10), |flows| flows.iter().any(denied));
    assert!(flows.iter().any(denied), "{flows:#?}");

    // A candidate without the GetCart rule would deny live calls: Blocked, naming the call.
    let stricter = GRPC_RULES.replace("        - {method: POST, path: /shop.Cart/GetCart}\n", "");
    let live = || call("/shop.Cart/GetCart").0 == Some(0);
    blocks_candidate(
        &local,
        &repo,
        ("web.yaml", &stricter),
        "web: only List",
        live,
        "8080/TCP POST /shop.Cart/GetCart",
    );
}

/// The web pod's ingress on 8443 (an echo responder standing for a TLS server): the client may
/// ask for `api.example.com` and any name below `cdn.example.com` (`serverNames`).
const SNI_RULES: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: '8443', protocol: TCP}]
      serverNames: [api.example.com, '*.cdn.example.com']
";

const SNI_CLUSTER: &str = "apiVersion: v1
kind: List
items:
- kind: Pod
  metadata: {name: web, namespace: shop, labels: {app: web}}
  spec: {containers: [{ports: [{containerPort: 8443}]}]}
  status: {podIP: 10.200.43.10}
- kind: Pod
  metadata: {name: client, namespace: shop, labels: {app: client}}
  status: {podIP: 10.200.43.20}
";

#[test]
fn tls_server_names_pass_or_reset_connections_and_a_candidate_denying_a_live_one_blocks() {
    use std::time::Duration;
    let (_dir, repo, local) = enforced("ple7-", SNI_CLUSTER, &[("web.yaml", SNI_RULES)], "6s");
    let hello = |name: &str| {
        printed(&local.local_probe(&["--from", "shop/client", "--to", "shop/web", "--port", "8443", "--tls-sni", name]))
    };
    until(|| hello("api.example.com").0 == Some(0));
    // An allowed name: the proxy splices the connection to the pod, which echoes the ClientHello.
    let (code, stdout, stderr) = hello("api.example.com");
    assert_eq!(code, Some(0), "{stdout}{stderr}\n{}", local.log());
    assert!(
        stdout.starts_with("shop/client -> shop/web 10.200.43.10:8443/TCP TLS api.example.com: answered ("),
        "{stdout}"
    );
    assert_eq!(hello("img.CDN.example.com").0, Some(0), "a wildcard domain, any case");
    // Another name, or none: reset.
    let (code, stdout, _) = hello("evil.example.org");
    assert_eq!(
        (code, stdout.as_str()),
        (Some(1), "shop/client -> shop/web 10.200.43.10:8443/TCP TLS evil.example.org: reset\n")
    );
    assert_eq!(hello("cdn.example.com").0, Some(1), "*.cdn.example.com is for names below it");
    let (code, stdout, _) = hello("");
    assert_eq!((code, stdout.ends_with("TLS <no server name>: reset\n")), (Some(1), true), "{stdout}");
    // A bare TCP handshake gets through L4: the proxy accepts the connection to read its
    // ClientHello.
    let plain = local.probe("shop/client", "shop/web", "8443/TCP");
    assert!(plain.connected, "{}", plain.stdout);

    // Observers see each connection the proxy judged, with its server name.
    let tls = |flow: &ObservedFlow| flow.l7.as_ref().and_then(|l7| l7.tls.as_ref()).map(|t| t.server_name.clone());
    let denied =
        |f: &ObservedFlow| tls(f) == Some(Some("evil.example.org".into())) && f.verdict == FlowVerdict::Dropped;
    let allowed =
        |f: &ObservedFlow| tls(f) == Some(Some("api.example.com".into())) && f.verdict == FlowVerdict::Forwarded;
    let flows = local.observed(&["--type", "l7"], Duration::from_secs(10), |flows| {
        flows.iter().any(denied) && flows.iter().any(allowed)
    });
    let evil = flows.iter().find(|f| denied(f)).unwrap_or_else(|| panic!("no reset for evil.example.org: {flows:#?}"));
    assert_eq!(evil.drop_reason.as_deref(), Some("sni-denied"));
    assert_eq!(
        (evil.port, evil.direction.as_str(), evil.destination.name()),
        (8443, "ingress", "shop/web".to_string())
    );
    assert!(flows.iter().any(allowed), "{flows:#?}");

    // A candidate without api.example.com would reset live connections: Blocked, naming them.
    let stricter = SNI_RULES.replace("[api.example.com, '*.cdn.example.com']", "['*.cdn.example.com']");
    let live = || hello("api.example.com").0 == Some(0);
    blocks_candidate(&local, &repo, ("web.yaml", &stricter), "web: only the CDN", live, "8443/TCP TLS api.example.com");
}

const KAFKA_RULES: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: '9092', protocol: TCP}]
      rules:
        kafka:
        - {role: produce, topic: orders}
        - {role: produce, topic: audit}
        - {role: consume, topic: orders}
";

const KAFKA_CLUSTER: &str = "apiVersion: v1
kind: List
items:
- kind: Pod
  metadata: {name: kafka, namespace: shop, labels: {app: kafka}, annotations: {palisade.dev/kafka-ports: '9092'}}
  spec: {containers: [{ports: [{containerPort: 9092}]}]}
  status: {podIP: 10.200.45.10}
- kind: Pod
  metadata: {name: client, namespace: shop, labels: {app: client}}
  status: {podIP: 10.200.45.20}
";

#[test]
fn kafka_requests_are_forwarded_or_answered_topic_authorization_failed_and_a_candidate_denying_a_live_one_blocks() {
    use palisade_agent::observe::KafkaFlow;
    use std::time::Duration;
    let (_dir, repo, local) = enforced("ple8-", KAFKA_CLUSTER, &[("kafka.yaml", KAFKA_RULES)], "6s");
    let request = |what: &str| {
        printed(&local.local_probe(&["--from", "shop/client", "--to", "shop/kafka", "--port", "9092", "--kafka", what]))
    };
    until(|| request("produce:orders").0 == Some(0));
    // Allowed: forwarded to the broker, which acknowledges it.
    let (code, stdout, stderr) = request("produce:orders");
    assert_eq!(code, Some(0), "{stdout}{stderr}\n{}", local.log());
    assert!(
        stdout.starts_with("shop/client -> shop/kafka 10.200.45.10:9092/TCP Kafka produce orders: NONE ("),
        "{stdout}"
    );
    assert!(stdout.ends_with("connection still open)\n"), "{stdout}");
    assert_eq!(request("consume:orders").0, Some(0), "role consume on orders");
    // Denied: the proxy answers TOPIC_AUTHORIZATION_FAILED itself and the connection stays
    // usable (the probe's next request, ApiVersions, is answered on it).
    let (code, stdout, _) = request("produce:payments");
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.starts_with(
            "shop/client -> shop/kafka 10.200.45.10:9092/TCP Kafka produce payments: TOPIC_AUTHORIZATION_FAILED ("
        ),
        "{stdout}"
    );
    assert!(stdout.ends_with("; connection still open)\n"), "{stdout}");
    assert_eq!(request("consume:audit").0, Some(1), "audit is produced to, not consumed");

    // Observers see each request the proxy judged, with its key, topics and answer.
    let kafka = |flow: &ObservedFlow| flow.l7.as_ref().and_then(|l7| l7.kafka.clone());
    let denied = |f: &ObservedFlow| {
        kafka(f).is_some_and(|k: KafkaFlow| k.topics == ["payments"] && k.api_key == "produce")
            && f.verdict == FlowVerdict::Dropped
    };
    let allowed = |f: &ObservedFlow| {
        kafka(f).is_some_and(|k| k.topics == ["orders"] && k.api_key == "produce")
            && f.verdict == FlowVerdict::Forwarded
    };
    let flows = local.observed(&["--type", "l7"], Duration::from_secs(10), |flows| {
        flows.iter().any(denied) && flows.iter().any(allowed)
    });
    let payments = flows.iter().find(|f| denied(f)).unwrap_or_else(|| panic!("no denial of payments: {flows:#?}"));
    let flow = kafka(payments).unwrap();
    assert_eq!(
        (flow.error.as_deref(), flow.client_id.as_deref(), flow.api_version),
        (Some("TOPIC_AUTHORIZATION_FAILED"), Some("palisade-probe"), 8)
    );
    assert_eq!((payments.port, payments.direction.as_str()), (9092, "ingress"));
    assert!(flows.iter().any(allowed), "{flows:#?}");

    // A candidate without produce to orders would deny live requests: Blocked, naming them.
    let stricter = KAFKA_RULES.replace("        - {role: produce, topic: orders}\n", "");
    let live = || request("produce:orders").0 == Some(0);
    let message = "kafka: orders are consumed only";
    blocks_candidate(&local, &repo, ("kafka.yaml", &stricter), message, live, "9092/TCP Kafka produce orders");
}
