//! Every policy in the shared Cilium corpora (`../shared/corpus/{cilium,cilium-connectivity}`)
//! parses cleanly, or fails only with "unsupported: ..." errors naming the feature. The files
//! that fail are pinned: a regression that makes a supported file fail, or an "unsupported"
//! turning into another error, breaks this test. Files that are invalid upstream are pinned with
//! their exact error.
//!
//! The corpora live outside the repository (`../shared/corpus` beside the checkout, or wherever
//! `PALISADE_CORPUS` points): without them these tests print one line saying what they skipped
//! and pass, so a fresh clone passes its tests; `PALISADE_REQUIRE_CORPUS=1` (CI) makes a missing
//! corpus a failure instead.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use palisade::files;
use palisade_policy::model::{L7Rules, Peer};
use palisade_policy::{ParseOptions, Severity, SourceFile, parse_policies};

/// Files that fail only with "unsupported" errors, and the feature each names.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("cilium/l4/envoy_forward_proxy.yaml", "Envoy listener redirects"),
    ("cilium/l4/envoy_listener_redirect.yaml", "Envoy listener redirects"),
    ("cilium/l4/wildcard_port_listener.yaml", "Envoy listener redirects"),
    ("cilium-connectivity/echo-ingress-mutual-authentication-fail-port-range.yaml", "mutual authentication"),
    ("cilium-connectivity/echo-ingress-mutual-authentication-fail.yaml", "mutual authentication"),
    ("cilium-connectivity/echo-ingress-mutual-authentication-port-range.yaml", "mutual authentication"),
    ("cilium-connectivity/echo-ingress-mutual-authentication.yaml", "mutual authentication"),
    ("cilium-connectivity/local-redirect-policy.yaml", "cilium.io/v2 CiliumLocalRedirectPolicy"),
];

/// Files that are not valid Cilium 1.19 policy as written upstream, with the exact error.
const INVALID_UPSTREAM: &[(&str, &str)] = &[
    // Upstream split this into two rules (l3/cidr/cidr.yaml): one L3 peer kind per rule.
    (
        "cilium/_removed-upstream/cidr.yaml",
        "cilium/_removed-upstream/cidr.yaml:10: spec.egress[0]: combining toCIDR and toCIDRSet in one rule is not supported; write one rule per peer kind",
    ),
    // A top-level `description` is not a field of the CRD (it belongs in spec).
    (
        "cilium/_removed-upstream/l3/host/host-policy.yaml",
        "cilium/_removed-upstream/l3/host/host-policy.yaml:3: description: unknown field `description`, expected one of `apiVersion`, `kind`, `metadata`, `spec`, `specs`, `status`",
    ),
    (
        "cilium/_removed-upstream/l7/kafka/kafka-Role.yaml",
        "cilium/_removed-upstream/l7/kafka/kafka-Role.yaml:3: description: unknown field `description`, expected one of `apiVersion`, `kind`, `metadata`, `spec`, `specs`, `status`",
    ),
    (
        "cilium/_removed-upstream/l7.yaml",
        "cilium/_removed-upstream/l7.yaml:3: description: unknown field `description`, expected one of `apiVersion`, `kind`, `metadata`, `spec`, `specs`, `status`",
    ),
    // `role: frontend` is indented as a sibling of `matchLabels`, not inside it.
    (
        "cilium/_removed-upstream/multi_rule.yaml",
        "cilium/_removed-upstream/multi_rule.yaml:12: spec.ingress[0].fromEndpoints[0].role: unknown field `role`, expected `matchLabels` or `matchExpressions`",
    ),
    // `toServices: [{}]` names no service.
    (
        "cilium/_removed-upstream/service-empty.yaml",
        "cilium/_removed-upstream/service-empty.yaml:12: spec.egress[1].toServices[0]: exactly one of k8sService or k8sServiceSelector is required",
    ),
    // `auth: {type: ...}` was renamed `authentication: {mode: ...}` before it shipped (1.14).
    (
        "cilium/auth/auth.yaml",
        "cilium/auth/auth.yaml:14: spec.egress[0].auth: unknown field `auth`, expected one of `toEndpoints`, `toRequires`, `toCIDR`, `toCIDRSet`, `toEntities`, `toServices`, `toFQDNs`, `toPorts`, `icmps`, `toNodes`, `toGroups`, `authentication`",
    ),
    // `apiversion:` lower case: Kubernetes field names are case-sensitive.
    (
        "cilium/l3/entities/from_nodes.yaml",
        "cilium/l3/entities/from_nodes.yaml:1: apiversion: not a Kubernetes object: apiVersion is required (field names are case-sensitive: \"apiversion\" is not \"apiVersion\")",
    ),
];

fn corpus_root() -> PathBuf {
    match std::env::var_os("PALISADE_CORPUS") {
        Some(dir) => PathBuf::from(dir),
        // The repository root is one level above this crate; the corpus sits next to the repository.
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"),
    }
}

/// (path relative to the corpus root, text) of every YAML file; None, after one line on stderr
/// saying so, when there is no corpus (a fresh clone); panics if a corpus is incomplete.
fn corpus_files() -> Option<Vec<(String, String)>> {
    let root = corpus_root();
    if !root.is_dir() {
        assert!(
            std::env::var_os("PALISADE_REQUIRE_CORPUS").is_none_or(|v| v.is_empty() || v == "0"),
            "PALISADE_REQUIRE_CORPUS is set and the corpus is not at {}",
            root.display()
        );
        static SKIPPED: std::sync::Once = std::sync::Once::new();
        SKIPPED.call_once(|| {
            // Straight to stderr: libtest would hide eprintln! output of a passing test.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "corpus: skipped the Cilium corpus tests: no corpus at {} (it lives outside the repository; set PALISADE_CORPUS to a copy)",
                root.display()
            );
        });
        return None;
    }
    let mut out = Vec::new();
    for dir in ["cilium", "cilium-connectivity"] {
        let path = root.join(dir);
        assert!(path.is_dir(), "{dir} is missing from the corpus at {}", root.display());
        let loaded = files::read_yaml_files(std::slice::from_ref(&path)).unwrap();
        assert!(loaded.len() >= 10, "only {} YAML files under {}", loaded.len(), path.display());
        for file in loaded {
            let rel = Path::new(&file.name).strip_prefix(&root).unwrap().display().to_string();
            out.push((rel, file.text));
        }
    }
    Some(out)
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Ok,
    Unsupported(Vec<String>),
    Invalid(Vec<String>),
}

fn outcome(name: &str, text: &str) -> Outcome {
    let parsed = parse_policies(&[SourceFile { name, text }], &ParseOptions::default());
    let errors: Vec<_> = parsed.diagnostics.iter().filter(|d| d.severity == Severity::Error).collect();
    if errors.is_empty() {
        // A file with no policy holds only other objects (Pods, Deployments), each reported as ignored.
        assert!(
            !parsed.set.policies.is_empty() || parsed.diagnostics.iter().any(|d| d.message.starts_with("ignored: ")),
            "{name}: parsed to no policy and said nothing: {:?}",
            parsed.diagnostics
        );
        return Outcome::Ok;
    }
    if errors.iter().all(|d| d.message.starts_with("unsupported: ")) {
        Outcome::Unsupported(errors.iter().map(|d| d.message.clone()).collect())
    } else {
        Outcome::Invalid(errors.iter().map(|d| d.to_string()).collect())
    }
}

#[test]
fn corpus_parses_or_names_the_unsupported_feature() {
    let Some(files) = corpus_files() else { return };
    assert!(files.len() >= 100, "corpus shrank to {} files", files.len());
    let unsupported: BTreeMap<&str, &str> = UNSUPPORTED.iter().copied().collect();
    let invalid: BTreeMap<&str, &str> = INVALID_UPSTREAM.iter().copied().collect();
    let mut problems = Vec::new();
    let mut table = Vec::new();
    let mut seen = Vec::new();
    for (name, text) in &files {
        let got = outcome(name, text);
        match (&got, unsupported.get(name.as_str()), invalid.get(name.as_str())) {
            (Outcome::Ok, None, None) => {}
            (Outcome::Unsupported(messages), Some(feature), None) => {
                seen.push(name.as_str());
                table.push(format!("{name:<80} {feature}"));
                if !messages.iter().all(|m| m.contains(feature)) {
                    problems.push(format!("{name}: expected only \"unsupported: {feature}\", got {messages:?}"));
                }
            }
            (Outcome::Invalid(messages), None, Some(expected)) => {
                seen.push(name.as_str());
                table.push(format!("{name:<80} INVALID UPSTREAM"));
                if messages != &[expected.to_string()] {
                    problems.push(format!(
                        "{name}: expected exactly\n    {expected}\n  got\n    {}",
                        messages.join("\n    ")
                    ));
                }
            }
            (got, _, _) => problems.push(format!(
                "{name}: unexpected outcome {got:?} (pinned unsupported: {:?}, pinned invalid: {:?})",
                unsupported.get(name.as_str()),
                invalid.get(name.as_str())
            )),
        }
    }
    for name in unsupported.keys().chain(invalid.keys()) {
        if !files.iter().any(|(f, _)| f == name) {
            problems.push(format!("{name}: pinned but not in the corpus"));
        }
    }
    println!(
        "{} corpus files: {} parse, {} unsupported, {} invalid upstream",
        files.len(),
        files.len() - seen.len(),
        UNSUPPORTED.len(),
        INVALID_UPSTREAM.len()
    );
    println!("{:<80} FEATURE", "FILE");
    for row in &table {
        println!("{row}");
    }
    assert!(problems.is_empty(), "{} corpus problem(s):\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn unsupported_errors_say_what_is_unsupported_and_where() {
    // Each unsupported error names the field path and a real line, not just the file.
    let Some(files) = corpus_files() else { return };
    for (name, text) in files {
        if !UNSUPPORTED.iter().any(|(f, _)| *f == name) {
            continue;
        }
        let parsed = parse_policies(&[SourceFile { name: &name, text: &text }], &ParseOptions::default());
        for d in parsed.diagnostics.iter().filter(|d| d.severity == Severity::Error) {
            assert!(d.line >= 1 && d.line as usize <= text.lines().count(), "{d}: line out of range");
            assert!(!d.path.is_empty(), "{d}: no field path");
            assert!(
                d.message.ends_with("is not implemented by Palisade yet")
                    || d.message.contains("is not a policy kind Palisade enforces"),
                "{d}"
            );
        }
    }
}

#[test]
fn kafka_policies_parse_into_kafka_rules() {
    // Cilium's Kafka examples (roles, API keys, topics) are enforced by the node's proxy: they
    // parse into Kafka rules, with nothing said about them.
    let Some(files) = corpus_files() else { return };
    let kafka: Vec<_> = files
        .iter()
        .filter(|(name, text)| text.contains("kafka:") && !INVALID_UPSTREAM.iter().any(|(f, _)| f == name))
        .collect();
    let mut names: Vec<&str> = kafka.iter().map(|(name, _)| name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["cilium/getting-started/kafka.yaml", "cilium/l7/kafka/kafka-role.yaml", "cilium/l7/kafka/kafka.yaml"]
    );
    for (name, text) in kafka {
        let parsed = parse_policies(&[SourceFile { name, text }], &ParseOptions::default());
        assert!(parsed.diagnostics.is_empty(), "{name}: {:?}", parsed.diagnostics);
        let rules = parsed.set.policies.iter().flat_map(|p| &p.rules);
        let ports = rules.flat_map(|r| r.ingress.rules.iter().chain(&r.egress.rules)).flat_map(|r| &r.ports);
        assert!(ports.filter(|p| matches!(p.l7, Some(L7Rules::Kafka(_)))).count() > 0, "{name}: no Kafka rules");
    }
}

/// The valid corpus files whose text holds `needle`, sorted, with their parse.
fn parsed_containing(needle: &str) -> Option<Vec<(String, palisade_policy::Parsed)>> {
    let files = corpus_files()?;
    let mut found: Vec<_> = files
        .iter()
        .filter(|(name, text)| text.contains(needle) && !INVALID_UPSTREAM.iter().any(|(f, _)| f == name))
        .map(|(name, text)| (name.clone(), parse_policies(&[SourceFile { name, text }], &ParseOptions::default())))
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Some(found)
}

#[test]
fn host_policies_parse_into_host_rules() {
    // Cilium's host firewall examples (nodeSelector) select nodes' host endpoints: each parses,
    // errors free, into policies whose rules select nodes.
    let Some(host) = parsed_containing("nodeSelector") else { return };
    let names: Vec<&str> = host.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "cilium-connectivity/host-firewall-egress.yaml",
            "cilium-connectivity/host-firewall-ingress.yaml",
            "cilium/_removed-upstream/host/lock-down-dev-vms-cidr-node.yaml",
            "cilium/_removed-upstream/host/lock-down-dev-vms.yaml",
            "cilium/host/allow-extended-protocols.yaml",
            "cilium/host/demo-host-policy.yaml",
            "cilium/host/lock-down-dev-vms-remote-node.yaml",
            "cilium/host/lock-down-gke.yaml",
            "cilium/host/lock-down-ingress.yaml",
        ]
    );
    for (name, parsed) in host {
        assert!(!parsed.has_errors(), "{name}: {:?}", parsed.diagnostics);
        assert!(!parsed.set.policies.is_empty(), "{name}: no policy");
        for policy in &parsed.set.policies {
            assert!(policy.rules.iter().all(|r| r.is_host_rule()), "{name}: {} has a rule selecting pods", policy.id);
        }
    }
}

#[test]
fn node_peers_parse_into_node_selectors() {
    // fromNodes and toNodes select remote nodes by their labels.
    let Some(nodes) = parsed_containing("Nodes:") else { return };
    let names: Vec<&str> = nodes.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["cilium/l3/entities/customnodes.yaml"]);
    for (name, parsed) in nodes {
        assert!(parsed.diagnostics.is_empty(), "{name}: {:?}", parsed.diagnostics);
        let peers: Vec<String> = parsed
            .set
            .policies
            .iter()
            .flat_map(|p| p.peers())
            .filter_map(|peer| match peer {
                Peer::Nodes(selector) => Some(selector.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(peers, ["any:node-role.kubernetes.io/control-plane=,reserved:remote-node"], "{name}");
    }
}
