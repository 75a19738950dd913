//! The `palisade` binary as scripts call it: exit codes, output shapes.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn palisade(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palisade")).args(args).output().expect("run palisade")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `palisade COMMAND --cluster CLUSTER --policies POLICIES ARGS...` (trace and plan).
fn on_policies(command: &str, cluster: &Path, policies: &Path, args: &[&str]) -> Output {
    let mut all = vec![command, "--cluster", s(cluster), "--policies", s(policies)];
    all.extend(args);
    palisade(&all)
}

/// `palisade diff --cluster CLUSTER --from-policies FROM --to-policies TO ARGS...`.
fn diff(cluster: &Path, from: &Path, to: &Path, args: &[&str]) -> Output {
    let mut all = vec!["diff", "--cluster", s(cluster), "--from-policies", s(from), "--to-policies", s(to)];
    all.extend(args);
    palisade(&all)
}

/// A fresh scratch directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("palisade-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const DB: &str = "prod/orders-db-0";
const API: &str = "prod/orders-api-6b7c8d9e5-p1o2i";

#[test]
fn check_exit_codes() {
    let dir = example("deny-precedence");
    let ok = palisade(&["check", s(&dir.join("policies"))]);
    assert_eq!(code(&ok), 0, "{}{}", stdout(&ok), String::from_utf8_lossy(&ok.stderr));

    let tmp = scratch("check");
    let bad = tmp.join("db.yaml");
    std::fs::write(&bad, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: db}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"80a\"}]}]\n").unwrap();
    let out = palisade(&["check", s(&bad)]);
    assert_eq!(code(&out), 1);
    assert!(
        stdout(&out).contains(&format!(
            "{}:7: spec.ingress[0].toPorts[0].ports[0].port: \"80a\" is not a port or a port name",
            bad.display()
        )),
        "{}",
        stdout(&out)
    );

    // Usage errors: no path, an unknown flag, a path that does not exist.
    assert_eq!(code(&palisade(&["check"])), 2);
    assert_eq!(code(&palisade(&["check", "--bogus", s(&bad)])), 2);
    assert_eq!(code(&palisade(&["check", s(&tmp.join("missing.yaml"))])), 2);
}

#[test]
fn check_leaves_out_what_palisadeignore_ignores() {
    let tmp = scratch("ignore");
    let bad = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: db}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"80a\"}]}]\n";
    std::fs::create_dir_all(tmp.join("drafts")).unwrap();
    std::fs::write(tmp.join("drafts/db.yaml"), bad).unwrap();
    std::fs::write(tmp.join("scratch.yaml"), bad).unwrap();
    let out = palisade(&["check", s(&tmp)]);
    assert_eq!(code(&out), 1, "without .palisadeignore the broken files are checked");

    // The Git source's rules: .gitignore syntax, relative to the top of the tree.
    std::fs::write(tmp.join(".palisadeignore"), "# work in progress\ndrafts/\n/scratch.yaml\n").unwrap();
    let out = palisade(&["check", s(&tmp)]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(!stdout(&out).contains("80a"), "{}", stdout(&out));
}

#[test]
fn trace_ip_family_picks_the_pods_addresses_of_that_family() {
    let dir = example("dual-stack");
    let (cluster, policies) = (dir.join("cluster.yaml"), dir.join("policies"));
    let (web, api) = ("shop/web-5d8f7c6b4-a1b2c", "shop/api-6c9d8e7f5-d3e4f");
    let trace = |args: &[&str]| on_policies("trace", &cluster, &policies, &[args, &["-o", "json"]].concat());
    let addresses = |out: &Output| {
        let v: serde_json::Value = serde_json::from_str(&stdout(out)).expect("trace -o json prints JSON");
        (
            v["from_address"].as_str().unwrap_or_default().to_owned(),
            v["to_address"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let v6 = trace(&["--from", web, "--to", api, "--port", "8080/TCP", "--ip-family", "6"]);
    assert_eq!(code(&v6), 0, "{}", stdout(&v6));
    assert_eq!(addresses(&v6), ("fd00:200::70:10".to_owned(), "fd00:200::70:20".to_owned()));
    let v4 = trace(&["--from", web, "--to", api, "--port", "8080/TCP"]);
    assert_eq!(addresses(&v4), ("10.200.70.10".to_owned(), "10.200.70.20".to_owned()));
    // ICMPv6 echo is allowed, ICMP echo is not.
    assert_eq!(code(&trace(&["--from", web, "--to", api, "--port", "icmpv6/128", "--ip-family", "6"])), 0);
    assert_eq!(code(&trace(&["--from", web, "--to", api, "--port", "icmp/8", "--ip-family", "4"])), 1);
    // A pod without an IPv6 address, ICMP of the other family, a bad family: exit 2, saying why.
    let out = trace(&["--from", web, "--to", "shop/legacy-report-0", "--port", "8080/TCP", "--ip-family", "6"]);
    assert_eq!(code(&out), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pod shop/legacy-report-0 has no IPv6 address (status.podIPs)"), "{stderr}");
    assert_eq!(code(&trace(&["--from", web, "--to", api, "--port", "icmp/8", "--ip-family", "6"])), 2);
    assert_eq!(code(&trace(&["--from", web, "--to", api, "--port", "8080/TCP", "--ip-family", "5"])), 2);
}

#[test]
fn trace_exit_codes_and_json_shape() {
    let dir = example("deny-precedence");
    let (cluster, policies) = (dir.join("cluster.yaml"), dir.join("policies"));
    let trace = |from: &str, to: &str, port: &str, json: bool| {
        let output: &[&str] = if json { &["-o", "json"] } else { &[] };
        on_policies("trace", &cluster, &policies, &[&["--from", from, "--to", to, "--port", port], output].concat())
    };
    let allowed = trace(API, DB, "5432/TCP", false);
    assert_eq!(code(&allowed), 0, "{}", stdout(&allowed));
    assert!(stdout(&allowed).contains("ALLOWED"), "{}", stdout(&allowed));
    let denied = trace(API, DB, "8008/TCP", false);
    assert_eq!(code(&denied), 1, "{}", stdout(&denied));
    assert!(stdout(&denied).contains("DENIED"));

    for (port, verdict, exit) in [("5432/TCP", "allowed", 0), ("8008/TCP", "denied", 1)] {
        let out = trace(API, DB, port, true);
        assert_eq!(code(&out), exit);
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("trace -o json prints JSON");
        assert_eq!(v["verdict"], verdict, "{v}");
        for side in ["egress", "ingress"] {
            assert!(v[side].is_object(), "{side} missing: {v}");
            assert!(v[side]["verdict"] == "allowed" || v[side]["verdict"] == "denied", "{v}");
            assert!(v[side]["rule"].is_string(), "{v}");
        }
        assert_eq!(v["ingress"]["endpoint"], DB);
    }
    // The denying side is the database's ingress.
    let v: serde_json::Value = serde_json::from_str(&stdout(&trace(API, DB, "8008/TCP", true))).unwrap();
    assert_eq!(v["ingress"]["verdict"], "denied");

    // Errors: unknown pod, malformed port, missing cluster file.
    assert_eq!(code(&trace("prod/nope", DB, "5432/TCP", false)), 2);
    assert_eq!(code(&trace(API, DB, "5432/XYZ", false)), 2);
    let args = ["--from", API, "--to", DB, "--port", "5432/TCP"];
    assert_eq!(code(&on_policies("trace", Path::new("/nonexistent.yaml"), &policies, &args)), 2);
}

#[test]
fn plan_runs_on_an_example() {
    let dir = example("client-app-database");
    let (cluster, policies) = (dir.join("cluster.yaml"), dir.join("policies"));
    let out = on_policies("plan", &cluster, &policies, &[]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout(&out).trim().is_empty());
    let out = on_policies("plan", &cluster, &policies, &["-o", "json"]);
    assert_eq!(code(&out), 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("plan -o json prints JSON");
    assert!(v.is_object() || v.is_array(), "{v}");
}

/// A copy of deny-precedence's policies without the `deny-dev-to-prod` policy.
fn without_dev_deny(test: &str) -> PathBuf {
    let src = example("deny-precedence").join("policies");
    let dst = scratch(test).join("policies");
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text.split("\n---\n").filter(|doc| !doc.contains("name: deny-dev-to-prod")).collect();
        std::fs::write(dst.join(path.file_name().unwrap()), kept.join("\n---\n")).unwrap();
    }
    dst
}

#[test]
fn diff_exit_codes_and_text_diff() {
    let dir = example("deny-precedence");
    let (cluster, policies) = (dir.join("cluster.yaml"), dir.join("policies"));
    let same = diff(&cluster, &policies, &policies, &[]);
    assert_eq!(code(&same), 0, "{}{}", stdout(&same), String::from_utf8_lossy(&same.stderr));
    assert!(stdout(&same).contains("0 newly denied, 0 newly allowed"), "{}", stdout(&same));

    let candidate = without_dev_deny("diff");
    let changed = diff(&cluster, &policies, &candidate, &[]);
    let text = stdout(&changed);
    assert_eq!(code(&changed), 1, "{text}");
    assert!(text.lines().any(|l| l.starts_with("+ dev/") && l.contains("denied -> ALLOWED")), "{text}");
    // The unified text diff of the removed policy.
    assert!(text.contains("--- CiliumClusterwideNetworkPolicy deny-dev-to-prod"), "{text}");
    assert!(text.contains("--- enforced") && text.contains("+++ candidate"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("-") && l.contains("deny-dev-to-prod")), "{text}");

    // A broken candidate is an error.
    let broken = scratch("diff-broken").join("bad.yaml");
    std::fs::write(&broken, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {}\n")
        .unwrap();
    assert_eq!(code(&diff(&cluster, &policies, &broken, &[])), 2);
}

#[test]
fn diff_over_a_flows_file() {
    let dir = example("deny-precedence");
    let (cluster, policies) = (dir.join("cluster.yaml"), dir.join("policies"));
    let candidate = without_dev_deny("flows");
    // Find a dev pod from the full diff, then evaluate flows given as JSON lines.
    let full = stdout(&diff(&cluster, &policies, &candidate, &[]));
    let dev = full
        .lines()
        .find_map(|l| l.strip_prefix("+ "))
        .and_then(|l| l.split(" -> ").next())
        .expect("a newly allowed flow")
        .to_string();
    let tmp = scratch("flows-file");
    let unaffected = tmp.join("unaffected.jsonl");
    std::fs::write(&unaffected, format!("{{\"from\": \"{API}\", \"to\": \"{DB}\", \"port\": \"5432/TCP\"}}\n\n{{\"from\": \"{API}\", \"to\": \"{DB}\", \"port\": \"8008/TCP\"}}\n")).unwrap();
    let out = diff(&cluster, &policies, &candidate, &["--flows", s(&unaffected)]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(stdout(&out).starts_with("2 flows evaluated: 0 newly denied, 0 newly allowed"), "{}", stdout(&out));

    let affected = tmp.join("affected.jsonl");
    std::fs::write(&affected, format!("{{\"from\": \"{dev}\", \"to\": \"{DB}\", \"port\": \"5432/TCP\"}}\n")).unwrap();
    let out = diff(&cluster, &policies, &candidate, &["--flows", s(&affected), "-o", "json"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("diff -o json prints JSON");
    assert_eq!(v["flows"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(v["policies"].as_array().is_some_and(|p| !p.is_empty()), "{v}");

    let bad = tmp.join("bad.jsonl");
    std::fs::write(&bad, "{\"from\": \"prod/x\", \"to\": 3}\n").unwrap();
    assert_eq!(code(&diff(&cluster, &policies, &candidate, &["--flows", s(&bad)])), 2);
}

const CLIENT: &str = "shop/client-7d9f8c6b5-q2w4e";
const CATALOG: &str = "shop/catalog-api-5f6d7c8b9-k3j2h";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The client-app-database example's policies plus DNS rules for the client's queries, which no
/// proxy judges yet; returns (cluster, policies, the DNS rules' file).
/// The client-app-database example with one more egress policy for the client: `to_ports` is
/// its `toPorts` list.
fn with_client_egress(test: &str, name: &str, to_ports: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = example("client-app-database");
    let policies = scratch(test);
    for file in std::fs::read_dir(dir.join("policies")).unwrap() {
        let path = file.unwrap().path();
        std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
    }
    let added = policies.join(format!("{name}.yaml"));
    std::fs::write(&added, format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: client}}}}\n  egress:\n  - toPorts:\n{to_ports}")).unwrap();
    (dir.join("cluster.yaml"), policies, added)
}

const DNS_RULES: &str =
    "    - ports: [{port: '53', protocol: UDP}]\n      rules:\n        dns: [{matchPattern: '*.example.com'}]\n";
/// Kafka rules on TCP, which the node's proxy judges, and on UDP, which it cannot.
const KAFKA_RULES: &str = "    - ports: [{port: '9092', protocol: TCP}, {port: '9093', protocol: UDP}]\n      rules:\n        kafka: [{topic: orders}]\n";

#[test]
fn check_does_not_warn_about_l7_rules_and_plan_says_which_redirects_no_proxy_judges() {
    let dir = example("client-app-database");
    // HTTP rules are judged by the node's proxy: nothing to warn about; DNS and Kafka rules neither.
    let out = palisade(&["check", s(&dir.join("policies")), "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(!v["diagnostics"].as_array().unwrap().iter().any(|d| d["path"].as_str().unwrap().contains("rules")), "{v}");
    let (_, policies, _) = with_client_egress("l7-dns-check", "client-dns", DNS_RULES);
    let out = palisade(&["check", s(&policies)]);
    assert_eq!((code(&out), stdout(&out).contains(" 0 warning(s)")), (0, true), "{}", stdout(&out));
    let (cluster, policies, _) = with_client_egress("l7-kafka", "client-kafka", KAFKA_RULES);
    for args in [vec!["check", s(&policies)], vec!["check", s(&policies), "--cluster", s(&cluster)]] {
        let out = palisade(&args);
        assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
        assert!(!stdout(&out).contains("kafka"), "{}", stdout(&out));
    }

    // plan: redirect entries say what the datapath does: HTTP and Kafka on TCP go to the proxy,
    // Kafka on UDP is denied.
    let plan = |json: bool| on_policies("plan", &cluster, &policies, if json { &["-o", "json"] } else { &[] });
    let out = plan(false);
    assert_eq!((code(&out), stderr(&out).as_str()), (0, ""));
    let text = stdout(&out);
    assert!(text.lines().any(|l| l.contains("redirect (denied: l7-unsupported)") && l.contains("UDP/9093")), "{text}");
    assert!(text.lines().any(|l| l.trim_start().starts_with("redirect ") && l.contains("TCP/9092")), "{text}");
    assert!(text.lines().any(|l| l.trim_start().starts_with("redirect ") && l.contains("TCP/8080")), "{text}");
    let out = plan(true);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("plan -o json prints JSON");
    let redirects = |endpoint: &str, direction: &str| -> Vec<serde_json::Value> {
        let e = v.as_array().unwrap().iter().find(|e| e["endpoint"] == endpoint).unwrap();
        e[direction]["entries"].as_array().unwrap().iter().filter(|e| e["verdict"] == "redirect").cloned().collect()
    };
    let http = redirects(CATALOG, "ingress");
    assert!(!http.is_empty(), "{v}");
    for entry in http {
        assert_eq!((&entry["datapath"], &entry["drop_reason"]), (&"proxy".into(), &serde_json::Value::Null));
    }
    let mut kafka: Vec<_> =
        redirects(CLIENT, "egress").iter().map(|e| (e["datapath"].clone(), e["drop_reason"].clone())).collect();
    kafka.sort_by_key(|(datapath, _)| datapath.to_string());
    assert_eq!(kafka, [("deny".into(), "l7-unsupported".into()), ("proxy".into(), serde_json::Value::Null)], "{v}");
}

#[test]
fn trace_shows_the_proxys_decision_at_an_http_redirect() {
    let dir = example("client-app-database");
    let (cluster, policies) = (dir.join("cluster.yaml"), dir.join("policies"));
    let trace = |http: Option<&str>, json: bool| {
        let mut args = vec!["--from", CLIENT, "--to", CATALOG, "--port", "8080/TCP"];
        if let Some(http) = http {
            args.extend(["--http", http]);
        }
        if json {
            args.extend(["-o", "json"]);
        }
        on_policies("trace", &cluster, &policies, &args)
    };
    for (http, verdict) in [(None, "allowed"), (Some("GET /api/v1/items"), "allowed"), (Some("POST /admin"), "denied")]
    {
        let out = trace(http, false);
        let text = stdout(&out);
        assert_eq!(code(&out), if verdict == "allowed" { 0 } else { 1 }, "{http:?}: the proxy decides\n{text}");
        let first = text.lines().next().unwrap();
        assert!(first.ends_with(&format!(": {}", verdict.to_uppercase())), "{first}");
        assert!(text.contains("L7 proxy: "), "{text}");
        assert!(!text.contains("drop reason"), "{text}");

        let out = trace(http, true);
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!((&v["verdict"], &v["intent"]), (&verdict.into(), &verdict.into()), "{v}");
        assert_eq!(v["ingress"]["drop_reason"], serde_json::Value::Null, "{v}");
    }
    let text = stdout(&trace(None, false));
    assert!(
        text.contains("L7 proxy: judges each request (http rules); pass --http or --dns to evaluate one"),
        "{text}"
    );
    let text = stdout(&trace(Some("POST /admin"), false));
    assert!(text.contains("L7 proxy: denied: POST /admin matches no HTTP rule for this peer (HTTP 403)"), "{text}");
    // One request at a time; headers belong to an HTTP request.
    let base = ["--from", CLIENT, "--to", CATALOG, "--port", "8080/TCP"];
    for extra in [
        &["--http", "GET /", "--dns", "api.example.com"][..],
        &["--header", "X-A: 1"][..],
        &["--dns-answer", "api.example.com"][..],
        &["--dns-answer", "api.example.com=10.200.99.300"][..],
    ] {
        let out = on_policies("trace", &cluster, &policies, &[&base[..], extra].concat());
        assert_eq!(code(&out), 2, "{extra:?}: {}", stderr(&out));
    }
}

#[test]
fn trace_shows_the_dns_proxys_decision_for_a_query() {
    let (cluster, policies, _) = with_client_egress("l7-dns", "client-dns", DNS_RULES);
    let trace = |name: &str, json: bool| {
        let mut args = vec!["--from", CLIENT, "--to", "cidr:10.200.99.53", "--port", "53/UDP", "--dns", name];
        if json {
            args.extend(["-o", "json"]);
        }
        on_policies("trace", &cluster, &policies, &args)
    };
    let out = trace("api.example.com", false);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "the DNS proxy allows it\n{text}");
    assert!(text.lines().next().unwrap().ends_with(": ALLOWED"), "{text}");
    assert!(
        text.contains("L7 proxy: allowed: query api.example.com matches CiliumNetworkPolicy shop/client-dns"),
        "{text}"
    );
    // `*.example.com` does not match the bare domain: REFUSED by the proxy.
    let out = trace("example.com", false);
    let text = stdout(&out);
    assert_eq!(code(&out), 1, "{text}");
    assert!(text.contains("L7 proxy: denied: query example.com matches no DNS rule for this peer (REFUSED)"), "{text}");
    assert!(!text.contains("drop reason"), "the proxy decides, not the datapath: {text}");
    let v: serde_json::Value = serde_json::from_str(&stdout(&trace("example.com", true))).unwrap();
    assert_eq!((&v["verdict"], &v["intent"]), (&"denied".into(), &"denied".into()), "{v}");
    assert_eq!(v["egress"]["drop_reason"], serde_json::Value::Null, "{v}");
}

#[test]
fn trace_from_the_node_under_each_allow_localhost_mode() {
    let dir = example("deny-precedence");
    let (cluster, policies) = (dir.join("cluster.yaml"), dir.join("policies"));
    let trace = |extra: &[&str]| {
        on_policies("trace", &cluster, &policies, &[&["--to", DB, "--port", "8008/TCP"], extra].concat())
    };
    // The database runs on node-b (10.200.0.12); nothing allows 8008 to it.
    let out = trace(&["--from", "node"]);
    assert_eq!(code(&out), 0, "always: the local host reaches its pods\n{}", stdout(&out));
    assert!(stdout(&out).starts_with(&format!("node (10.200.0.12) -> {DB} 8008/TCP: ALLOWED")), "{}", stdout(&out));
    assert!(stdout(&out).contains("the local host may always reach its pods"), "{}", stdout(&out));
    let out = trace(&["--from", "node", "--allow-localhost", "policy"]);
    assert_eq!(code(&out), 1, "policy: the host is subject to policy\n{}", stdout(&out));
    assert!(stdout(&out).contains("peer identity 1: reserved:host"), "{}", stdout(&out));

    // The node's address is host only to that node's datapath (--node); without it, remote-node.
    let json = |extra: &[&str]| {
        let mut args = vec!["--from", "cidr:10.200.0.12", "-o", "json"];
        args.extend(extra);
        serde_json::from_str::<serde_json::Value>(&stdout(&trace(&args))).unwrap()
    };
    assert_eq!(json(&[])["ingress"]["remote_identity"], 6);
    let v = json(&["--node", "node-b"]);
    assert_eq!((&v["ingress"]["remote_identity"], &v["verdict"]), (&1.into(), &"allowed".into()), "{v}");
    let v = json(&["--node", "node-b", "--allow-localhost", "policy"]);
    assert_eq!(v["verdict"], "denied", "{v}");

    // Usage errors: an unknown mode or node.
    assert_eq!(code(&trace(&["--from", "node", "--allow-localhost", "never"])), 2);
    let out = trace(&["--from", "node", "--node", "node-z"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("--node") && stderr(&out).contains("node-z"), "{}", stderr(&out));
}

const FRONTEND: &str = "shop/frontend-7c9d8b6f5-x2m4q";
const LOADGEN: &str = "shop/loadgen-6b8f7d9c4-r5t7w";

#[test]
fn trace_to_a_service_reports_each_backend() {
    let dir = example("services");
    let (cluster, policies) = (dir.join("cluster.yaml"), dir.join("policies"));
    let trace = |cluster: &Path, from: &str, to: &str, port: &str, extra: &[&str]| {
        on_policies("trace", cluster, &policies, &[&["--from", from, "--to", to, "--port", port], extra].concat())
    };
    // The load generator may reach the stable backend, not the canary: the Service is denied.
    let out = trace(&cluster, LOADGEN, "svc/shop/api", "8080/TCP", &[]);
    let text = stdout(&out);
    assert_eq!(code(&out), 1, "{text}{}", stderr(&out));
    assert!(
        text.starts_with(&format!("{LOADGEN} -> svc/shop/api 8080/TCP: DENIED (1 of 2 backends denied)")),
        "{text}"
    );
    assert!(text.contains("svc shop/api:8080/TCP -> shop/api-0:8080 ALLOWED"), "{text}");
    assert!(text.contains("svc shop/api:8080/TCP -> shop/api-1:8081 DENIED"), "{text}");
    let out = trace(&cluster, FRONTEND, "svc/shop/api", "8080/TCP", &[]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));

    let out = trace(&cluster, LOADGEN, "svc/shop/api", "8080/TCP", &["-o", "json"]);
    assert_eq!(code(&out), 1);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("trace -o json prints JSON");
    assert_eq!(
        (v["service"].as_str(), v["port"].as_str(), v["verdict"].as_str()),
        (Some("shop/api"), Some("8080/TCP"), Some("denied")),
        "{v}"
    );
    let backends = v["backends"].as_array().expect("a backends array");
    let summary: Vec<(&str, u64, &str)> = backends
        .iter()
        .map(|b| (b["backend"].as_str().unwrap(), b["port"].as_u64().unwrap(), b["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(summary, [("shop/api-0", 8080, "allowed"), ("shop/api-1", 8081, "denied")], "{v}");
    for b in backends {
        assert!(
            b.get("drop_reason").is_some() && b["ingress"]["rule"].is_string() && b["egress"]["rule"].is_string(),
            "{b}"
        );
    }
    assert_eq!(backends[0]["ingress"]["rule"], "CiliumNetworkPolicy shop/api-stable-loadtest spec.ingress[0]");

    // A Service outside the cluster: its EndpointSlice's address is the backend.
    let out = trace(&cluster, FRONTEND, "svc/shop/payments-gw", "443/TCP", &[]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(stdout(&out).contains("svc shop/payments-gw:443/TCP -> 10.200.9.50:8443 ALLOWED"), "{}", stdout(&out));

    // Bad input names what is wrong and exits 2.
    for (to, port, error) in [
        ("svc/shop/nope", "8080/TCP", "no Service shop/nope in the cluster file"),
        ("svc/shop/api", "80/TCP", "Service shop/api has no port 80/TCP (its ports: 8080/TCP, 9090/TCP)"),
        ("svc/shop", "80/TCP", "--to: \"svc/shop\" is not svc/NAMESPACE/NAME"),
    ] {
        let out = trace(&cluster, FRONTEND, to, port, &[]);
        assert_eq!(code(&out), 2, "{to} {port}");
        assert!(stderr(&out).contains(error), "{to} {port}: {}", stderr(&out));
    }
    let out = trace(&cluster, "svc/shop/api", "shop/db-0", "5432/TCP", &[]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("svc/shop/api is a Service: a Service is only a destination"), "{}", stderr(&out));

    // A Service without ready backends: kube-proxy rejects the connection, so it is denied.
    let idle = scratch("svc-idle").join("cluster.yaml");
    let mut text = std::fs::read_to_string(&cluster).unwrap();
    text.push_str("- apiVersion: v1\n  kind: Service\n  metadata: {name: idle, namespace: shop}\n  spec: {selector: {app: nothing}, clusterIP: 10.200.250.50, ports: [{port: 80}]}\n");
    std::fs::write(&idle, text).unwrap();
    let out = trace(&idle, FRONTEND, "svc/shop/idle", "80/TCP", &[]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out)
            .contains("DENIED (Service shop/idle has no ready backends for 80/TCP: kube-proxy rejects traffic to it)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn diff_of_a_service_flow_shows_the_backend_that_changes() {
    let dir = example("services");
    let (cluster, policies) = (dir.join("cluster.yaml"), dir.join("policies"));
    // The candidate drops the canary's port from the frontend's egress.
    let tmp = scratch("svc-diff");
    let candidate = tmp.join("policies");
    std::fs::create_dir_all(&candidate).unwrap();
    for entry in std::fs::read_dir(&policies).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("            - port: \"8081\"\n              protocol: TCP\n", "");
        std::fs::write(candidate.join(path.file_name().unwrap()), text).unwrap();
    }
    let flows = tmp.join("flows.jsonl");
    std::fs::write(&flows, format!("{{\"from\": \"{FRONTEND}\", \"to\": \"svc/shop/api\", \"port\": \"8080/TCP\"}}\n"))
        .unwrap();
    let out = diff(&cluster, &policies, &candidate, &["--flows", s(&flows)]);
    let text = stdout(&out);
    assert_eq!(code(&out), 1, "{text}{}", stderr(&out));
    assert!(text.starts_with("1 flows evaluated: 1 newly denied, 0 newly allowed"), "{text}");
    assert!(
        text.contains(&format!("- {FRONTEND} -> svc/shop/api 8080/TCP via shop/api-1:8081: allowed -> DENIED")),
        "{text}"
    );
    assert!(!text.contains("via shop/api-0"), "{text}");

    let out = diff(&cluster, &policies, &candidate, &["--flows", s(&flows), "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("diff -o json prints JSON");
    let flow = &v["flows"][0];
    assert_eq!(
        (flow["to"].as_str(), flow["backend"].as_str(), flow["backend_port"].as_u64()),
        (Some("svc/shop/api"), Some("shop/api-1"), Some(8081)),
        "{v}"
    );
    assert_eq!(flow["change"], "newly-denied");

    let unknown = tmp.join("unknown.jsonl");
    std::fs::write(
        &unknown,
        format!("{{\"from\": \"{FRONTEND}\", \"to\": \"svc/shop/nope\", \"port\": \"8080/TCP\"}}\n"),
    )
    .unwrap();
    let out = diff(&cluster, &policies, &candidate, &["--flows", s(&unknown)]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("no Service shop/nope in the cluster file"), "{}", stderr(&out));
}

#[test]
fn bench_report_writes_json_and_markdown_and_exits_2_on_a_bad_line() {
    let dir = scratch("bench-report");
    std::fs::write(dir.join("datapath.txt"), "kernel: 6.12.0\ncpu: Test CPU (2 CPUs)\nflip_1000_ms: 10 ms\n").unwrap();
    std::fs::write(dir.join("source.txt"), "sync_first_s: 2.5 s\nfetch_vs_git_ratio: 0.8\n").unwrap();
    let out = palisade(&["bench", "report", s(&dir)]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["flip_1000_ms"], serde_json::json!({"value": 10, "unit": "ms", "goal": "≤ 10 ms", "met": true}));
    assert_eq!(json["sync_first_s"]["met"], false);
    assert_eq!(json["cpu"]["value"], "Test CPU (2 CPUs)");
    assert!(json["date"]["value"].is_string());
    let markdown = std::fs::read_to_string(dir.join("results.md")).unwrap();
    assert_eq!(stdout(&out), markdown);
    assert!(markdown.contains("| sync_first_s | 2.5 s | ≤ 2 s | **no** |"), "{markdown}");

    std::fs::write(dir.join("source.txt"), "sync_first_s: 2.5 s\nfetch took 3 s\n").unwrap();
    let out = palisade(&["bench", "report", s(&dir)]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("source.txt:2: expected `name: value unit`"), "{}", stderr(&out));
}

/// What bash offers for `palisade WORDS... <TAB>` with the script of `palisade completion bash`.
fn bash_completes(words: &[&str]) -> Vec<String> {
    let script = stdout(&palisade(&["completion", "bash"]));
    let dir = scratch(&format!("bash-{}", words.len()));
    let path = dir.join("palisade.bash");
    std::fs::write(&path, script).unwrap();
    let mut all = vec!["palisade"];
    all.extend(words);
    all.push("");
    let quoted: Vec<String> = all.iter().map(|w| format!("'{w}'")).collect();
    let test = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; _palisade palisade '' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display(),
        quoted.join(" "),
        all.len() - 1,
        all[all.len() - 2],
    );
    let out = Command::new("bash").args(["-c", &test]).output().expect("run bash");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    stdout(&out).lines().map(String::from).collect()
}

#[test]
fn completion_scripts_offer_the_subcommands() {
    let top = bash_completes(&[]);
    for name in ["get", "describe", "promote", "reconcile", "version", "completion", "--kubeconfig"] {
        assert!(top.contains(&name.to_string()), "{name} in {top:?}");
    }
    let get = bash_completes(&["get"]);
    for name in ["rollouts", "revisions", "reports"] {
        assert!(get.contains(&name.to_string()), "{name} in {get:?}");
    }
    let flags = bash_completes(&["get", "reports"]);
    for flag in ["--selector", "--watch", "--output", "--kubeconfig"] {
        assert!(flags.contains(&flag.to_string()), "{flag} in {flags:?}");
    }

    let zsh = palisade(&["completion", "zsh"]);
    assert_eq!(code(&zsh), 0);
    assert!(stdout(&zsh).starts_with("#compdef palisade\n"), "{}", stdout(&zsh));
    assert!(stdout(&zsh).contains("'revisions:PolicyRevisions"), "zsh names the kinds");
    let fish = stdout(&palisade(&["completion", "fish"]));
    assert!(fish.contains("complete -c palisade -n \"__fish_palisade_needs_command\" -f -a \"reconcile\""), "{fish}");
    assert_eq!(code(&palisade(&["completion", "tcsh"])), 2);
}

#[test]
fn kubectl_completes_the_plugin_through_its_complete_script() {
    let plugin = Path::new(env!("CARGO_BIN_EXE_kubectl-palisade"));
    let script = Command::new(plugin).args(["completion", "bash"]).output().unwrap();
    assert_eq!(code(&script), 0);
    let text = stdout(&script);
    assert!(text.starts_with("#!/bin/sh\n") && text.ends_with("exec kubectl-palisade __complete \"$@\"\n"), "{text}");

    // Installed as kubectl looks for it, beside the plugin, and called as kubectl calls it.
    let dir = scratch("kubectl-complete");
    let complete = dir.join("kubectl_complete-palisade");
    std::fs::write(&complete, &text).unwrap();
    std::fs::set_permissions(&complete, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", plugin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let ask = |words: &[&str]| stdout(&Command::new(&complete).args(words).env("PATH", &path).output().unwrap());
    let get = ask(&["get", ""]);
    let lines: Vec<&str> = get.lines().collect();
    assert_eq!(lines.last(), Some(&":4"), "no file completion: {get}");
    let names: Vec<&str> = lines.iter().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(names, ["rollouts", "revisions", "reports", "help", ":4"]);
    assert!(lines[1].starts_with("revisions\tPolicyRevisions"), "{get}");
    assert_eq!(ask(&["get", "reports", "-o", "y"]), "yaml\n:4\n");
    assert_eq!(ask(&["reconcile", "web", "--ti"]), "--timeout\tWith --wait: how long to wait, e.g. 90s, 5m, 1h\n:4\n");
    assert_eq!(ask(&["--kubeconfig", ""]), ":0\n", "a path: the shell completes files");
}

#[test]
fn controller_run_reads_the_kubeconfig_flag() {
    let tmp = scratch("controller-kubeconfig");
    let missing = tmp.join("missing");
    let out = palisade(&["controller", "run", "--kubeconfig", s(&missing), "--metrics-addr", "127.0.0.1:0"]);
    assert_eq!(code(&out), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kubeconfig: ") && err.contains(s(&missing)), "{err}");
}
