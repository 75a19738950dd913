//! Local mode's L7 pods on real namespaces (root only: these tests fail without it): HTTP
//! responders, DNS pods and hosts outside the cluster.
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use palisade_netsim::dns::{Resolved, resolve};
use palisade_netsim::http::{HttpOutcome, request};
use palisade_netsim::net::remove_netns_with_prefix;
use palisade_netsim::{Local, Outcome, Port, Responders, TrafficGenerator, TrafficOptions, probe, require_root};
use palisade_policy::l7::HttpRequest;

const TIMEOUT: Duration = Duration::from_secs(2);

struct Cleanup(&'static str);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = remove_netns_with_prefix(self.0);
    }
}

fn create(prefix: &'static str) -> (Local, Cleanup) {
    require_root().expect("these tests create network namespaces: run them as root");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/l7.cluster.yaml");
    let local = Local::read(&file, prefix).unwrap();
    local.network.create().unwrap();
    (local, Cleanup(prefix))
}

/// `request` from `from` to `to`, with its status, `x-echo-` headers and body.
fn http(local: &Local, from: &str, to: &str, port: u16, line: &str, headers: &[&str]) -> HttpOutcome {
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let (from, to) = (local.network.pod(from).unwrap(), local.network.pod(to).unwrap());
    request(&from.netns, to.ip, port, &HttpRequest::parse(line, &headers).unwrap(), TIMEOUT).unwrap()
}

fn ok_response(outcome: HttpOutcome) -> (Vec<(String, String)>, String) {
    match outcome {
        HttpOutcome::Response { status, headers, body, .. } if status == 200 => (headers, body),
        other => panic!("expected 200 OK, got {other:?}"),
    }
}

#[test]
fn http_ports_answer_with_the_pod_the_path_and_the_headers() {
    let (local, _cleanup) = create("pll1-");
    let responders = Responders::start(&local.network).unwrap();
    let served: Vec<String> = responders.served().iter().map(|(pod, port)| format!("{pod} {port}")).collect();
    assert_eq!(
        served,
        [
            "ops/dns 53/UDP",
            "ops/dns 53/TCP",
            "partner/api 443/TCP",
            "shop/web 8080/TCP",
            "shop/web 9090/TCP",
            "shop/web 5432/TCP"
        ]
    );
    // The declared port and the undeclared one both speak HTTP.
    for port in [8080, 9090] {
        let (headers, body) =
            ok_response(http(&local, "ops/dns", "shop/web", port, "GET /api/v1?x=1", &["X-Trace: abc"]));
        assert_eq!(body, "palisade-http shop/web GET /api/v1?x=1\n");
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(header("x-echo-x-trace"), Some("abc"));
        assert_eq!(header("x-echo-host"), Some(format!("10.200.1.10:{port}").as_str()), "the default Host");
    }
    let (headers, body) =
        ok_response(http(&local, "shop/web", "partner/api", 443, "POST /orders", &["Host: api.partner.example"]));
    assert_eq!(body, "palisade-http partner/api POST /orders\n");
    assert!(headers.contains(&("x-echo-host".into(), "api.partner.example".into())), "{headers:?}");
    // The other declared port still echoes; a port nobody serves refuses.
    let web = local.network.pod("shop/web").unwrap();
    let dns = local.network.pod("ops/dns").unwrap();
    assert!(probe(dns, web.ip, Port::Tcp(5432), TIMEOUT).unwrap().is_connected());
    assert_eq!(http(&local, "ops/dns", "shop/web", 8081, "GET /", &[]), HttpOutcome::Failed(Outcome::Refused));

    drop(responders);
    assert_eq!(http(&local, "ops/dns", "shop/web", 8080, "GET /", &[]), HttpOutcome::Failed(Outcome::Refused));
}

#[test]
fn dns_pods_answer_their_names_over_udp_and_tcp() {
    let (local, _cleanup) = create("pll2-");
    let _responders = Responders::start(&local.network).unwrap();
    let web = local.network.pod("shop/web").unwrap();
    let server = local.network.pod(web.resolver.as_deref().unwrap()).unwrap().ip;
    assert_eq!(server, Ipv4Addr::new(10, 200, 3, 2));
    let ask = |name: &str| resolve(&web.netns, server, name, TIMEOUT).unwrap();
    let partner = |last| Ipv4Addr::new(10, 200, 99, last);
    assert_eq!(ask("api.partner.example"), Resolved::Addresses(vec![partner(10), partner(11)]));
    assert_eq!(ask("WWW.partner.example."), Resolved::Addresses(vec![partner(10)]));
    assert_eq!(ask("nope.partner.example"), Resolved::Failed(ResponseCode::NXDomain));
    // 53/TCP answers too (its declared port 53/UDP and the undeclared TCP one).
    assert!(probe(web, server, Port::Tcp(53), TIMEOUT).unwrap().is_connected());
    // A pod that runs no DNS server: no answer (ICMP port unreachable).
    let api = local.network.pod("partner/api").unwrap().ip;
    assert_eq!(resolve(&web.netns, api, "api.partner.example", TIMEOUT).unwrap(), Resolved::NoAnswer(Outcome::Refused));
}

#[test]
fn a_host_outside_the_cluster_gets_a_namespace_but_is_no_pod() {
    let (local, _cleanup) = create("pll3-");
    let _responders = Responders::start(&local.network).unwrap();
    let api = local.network.pod("partner/api").unwrap();
    assert!(api.outside && !local.network.pod("shop/web").unwrap().outside);
    assert!(local.cluster.pods.iter().all(|p| p.key() != "partner/api"), "not a pod to policy");
    assert_eq!(local.cluster.outside_hosts.len(), 1);
    // Reached over the node namespace like any pod (a TCP handshake retries where a fresh
    // link's first packet is lost; one ping would not).
    let (_, body) = ok_response(http(&local, "shop/web", "partner/api", 443, "GET /", &[]));
    assert_eq!(body, "palisade-http partner/api GET /\n");
}

#[test]
fn declared_flows_to_http_and_dns_ports_ask_as_real_clients() {
    let (local, _cleanup) = create("pll4-");
    let _responders = Responders::start(&local.network).unwrap();
    let talks: Vec<String> = local.talks.iter().map(|t| format!("{} {}", t.to, t.port)).collect();
    assert_eq!(talks, ["ops/dns 53/UDP", "ops/dns 53/TCP", "partner/api 443/TCP", "shop/web 5432/TCP"]);
    let options = TrafficOptions { interval: Duration::from_millis(20), timeout: TIMEOUT };
    let generator = TrafficGenerator::start(&local, options).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while generator.counts().values().any(|c| c.successes < 3) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // An echo would get no answer from an HTTP or DNS server: every flow asks what its port serves.
    for (talk, count) in generator.counts() {
        assert!(count.successes >= 3 && count.failures == 0, "{talk:?}: {count:?}");
    }
}
