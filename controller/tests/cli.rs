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
fn trace_exit_codes_and_json_shape() {
    let dir = example("deny-precedence");
    let (cluster, policies) = (dir.join("cluster.yaml"), dir.join("policies"));
    let trace = |from: &str, to: &str, port: &str, json: bool| {
        let mut args = vec![
            "trace",
            "--cluster",
            s(&cluster),
            "--policies",
            s(&policies),
            "--from",
            from,
            "--to",
            to,
            "--port",
            port,
        ];
        if json {
            args.extend(["-o", "json"]);
        }
        palisade(&args)
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
    assert_eq!(
        code(&palisade(&[
            "trace",
            "--cluster",
            "/nonexistent.yaml",
            "--policies",
            s(&policies),
            "--from",
            API,
            "--to",
            DB,
            "--port",
            "5432/TCP"
        ])),
        2
    );
}

#[test]
fn plan_runs_on_an_example() {
    let dir = example("client-app-database");
    let out = palisade(&["plan", "--cluster", s(&dir.join("cluster.yaml")), "--policies", s(&dir.join("policies"))]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout(&out).trim().is_empty());
    let out = palisade(&[
        "plan",
        "--cluster",
        s(&dir.join("cluster.yaml")),
        "--policies",
        s(&dir.join("policies")),
        "-o",
        "json",
    ]);
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
    let same =
        palisade(&["diff", "--cluster", s(&cluster), "--from-policies", s(&policies), "--to-policies", s(&policies)]);
    assert_eq!(code(&same), 0, "{}{}", stdout(&same), String::from_utf8_lossy(&same.stderr));
    assert!(stdout(&same).contains("0 newly denied, 0 newly allowed"), "{}", stdout(&same));

    let candidate = without_dev_deny("diff");
    let changed =
        palisade(&["diff", "--cluster", s(&cluster), "--from-policies", s(&policies), "--to-policies", s(&candidate)]);
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
    assert_eq!(
        code(&palisade(&[
            "diff",
            "--cluster",
            s(&cluster),
            "--from-policies",
            s(&policies),
            "--to-policies",
            s(&broken)
        ])),
        2
    );
}

#[test]
fn diff_over_a_flows_file() {
    let dir = example("deny-precedence");
    let (cluster, policies) = (dir.join("cluster.yaml"), dir.join("policies"));
    let candidate = without_dev_deny("flows");
    // Find a dev pod from the full diff, then evaluate flows given as JSON lines.
    let full = stdout(&palisade(&[
        "diff",
        "--cluster",
        s(&cluster),
        "--from-policies",
        s(&policies),
        "--to-policies",
        s(&candidate),
    ]));
    let dev = full
        .lines()
        .find_map(|l| l.strip_prefix("+ "))
        .and_then(|l| l.split(" -> ").next())
        .expect("a newly allowed flow")
        .to_string();
    let tmp = scratch("flows-file");
    let unaffected = tmp.join("unaffected.jsonl");
    std::fs::write(&unaffected, format!("{{\"from\": \"{API}\", \"to\": \"{DB}\", \"port\": \"5432/TCP\"}}\n\n{{\"from\": \"{API}\", \"to\": \"{DB}\", \"port\": \"8008/TCP\"}}\n")).unwrap();
    let out = palisade(&[
        "diff",
        "--cluster",
        s(&cluster),
        "--from-policies",
        s(&policies),
        "--to-policies",
        s(&candidate),
        "--flows",
        s(&unaffected),
    ]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(stdout(&out).starts_with("2 flows evaluated: 0 newly denied, 0 newly allowed"), "{}", stdout(&out));

    let affected = tmp.join("affected.jsonl");
    std::fs::write(&affected, format!("{{\"from\": \"{dev}\", \"to\": \"{DB}\", \"port\": \"5432/TCP\"}}\n")).unwrap();
    let out = palisade(&[
        "diff",
        "--cluster",
        s(&cluster),
        "--from-policies",
        s(&policies),
        "--to-policies",
        s(&candidate),
        "--flows",
        s(&affected),
        "-o",
        "json",
    ]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("diff -o json prints JSON");
    assert_eq!(v["flows"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(v["policies"].as_array().is_some_and(|p| !p.is_empty()), "{v}");

    let bad = tmp.join("bad.jsonl");
    std::fs::write(&bad, "{\"from\": \"prod/x\", \"to\": 3}\n").unwrap();
    assert_eq!(
        code(&palisade(&[
            "diff",
            "--cluster",
            s(&cluster),
            "--from-policies",
            s(&policies),
            "--to-policies",
            s(&candidate),
            "--flows",
            s(&bad)
        ])),
        2
    );
}
