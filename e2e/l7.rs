//! Local mode's L7 pods through the CLI, without any policy: `palisade local up` on a cluster
//! file with HTTP ports, a DNS pod and a host outside the cluster, then `palisade local probe
//! --http` and `--dns` as a person runs them.
mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Output;

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
