//! Hostile input through `parse_policies`: each is a clear error naming the file and line, and
//! returns quickly (no hang, no crash, no unbounded memory).
use std::time::{Duration, Instant};

use palisade_policy::{Diagnostic, ParseOptions, Parsed, Severity, SourceFile, parse_policies};

const FILE: &str = "policies/hostile.yaml";

/// Parses `text` as one file and checks that it took under 2 s.
fn parse_timed(text: &str) -> Parsed {
    let start = Instant::now();
    let parsed = parse_policies(&[SourceFile { name: FILE, text }], &ParseOptions::default());
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "parsing took {took:?}");
    parsed
}

/// The single error of a rejected file; the file yields no policy.
fn only_error(parsed: &Parsed) -> &Diagnostic {
    let errors: Vec<_> = parsed.errors().collect();
    assert_eq!(errors.len(), 1, "expected one error, got {:#?}", parsed.diagnostics);
    assert!(parsed.set.policies.is_empty(), "a rejected file must yield no policy");
    let e = errors[0];
    assert_eq!(e.file, FILE);
    assert_eq!(e.severity, Severity::Error);
    e
}

fn cnp(rules: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n  namespace: ns\nspec:\n  endpointSelector: {{}}\n{rules}"
    )
}

#[test]
fn alias_bomb_is_refused() {
    // "Billion laughs": nine levels of ten aliases each would expand to 10^9 nodes.
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        let list = [prev.as_str(); 10].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{list}]\n"));
    }
    let parsed = parse_timed(&text);
    let e = only_error(&parsed);
    assert!(e.message.starts_with("more than 200000 YAML nodes"), "{e}");
    // The line of the alias where the budget ran out, not line 0 or 1.
    assert!((5..=10).contains(&e.line), "{e}");
}

#[test]
fn ten_thousand_deep_nesting_is_refused() {
    for (open, close) in [("[", "]"), ("{a: ", "}")] {
        let text = format!("{}1{}", open.repeat(10_000), close.repeat(10_000));
        let parsed = parse_timed(&text);
        let e = only_error(&parsed);
        // Flow style trips yaml-rust2's own recursion guard first; either way a clear error at line 1.
        assert!(
            e.to_string() == format!("{FILE}:1: nested deeper than 64 levels")
                || e.to_string() == format!("{FILE}:1: recursion limit exceeded"),
            "{open}: {e}"
        );
    }
    // Block style, compact nested sequences on the second line: the error names that line.
    let text = format!("x:\n  {}1\n", "- ".repeat(10_000));
    let parsed = parse_timed(&text);
    assert_eq!(only_error(&parsed).to_string(), format!("{FILE}:2: nested deeper than 64 levels"));
}

#[test]
fn file_over_the_size_limit_is_refused_before_parsing() {
    let limit = ParseOptions::default().limits.max_bytes;
    let padding = "#".repeat(limit);
    let text = format!("{}\n{padding}\n", cnp("  ingress: [{}]"));
    let parsed = parse_timed(&text);
    let e = only_error(&parsed);
    assert_eq!(e.to_string(), format!("{FILE}:1: input is {} bytes, more than the limit of {limit}", text.len()));
}

#[test]
fn regex_that_does_not_compile_is_an_error_at_its_line() {
    let text = cnp(concat!(
        "  ingress:\n",
        "  - toPorts:\n",
        "    - ports: [{port: \"80\", protocol: TCP}]\n",
        "      rules:\n",
        "        http:\n",
        "        - method: GET\n",
        "          path: \"/api/(v1\"\n",
    ));
    let parsed = parse_timed(&text);
    let e = only_error(&parsed);
    assert_eq!(e.line, 14, "{e}");
    assert_eq!(e.path, "spec.ingress[0].toPorts[0].rules.http[0].path");
    assert!(e.message.starts_with("\"/api/(v1\" is not a valid regular expression: "), "{e}");
}

#[test]
fn huge_regex_hits_the_size_limit() {
    // Compiles to far more than the 1 MiB program limit, but is small text.
    let pattern = "(\\w{100}){100}";
    let text = cnp(&format!(
        "  ingress:\n  - toPorts:\n    - ports: [{{port: \"80\"}}]\n      rules:\n        http:\n        - path: '/{pattern}'\n"
    ));
    let parsed = parse_timed(&text);
    let e = only_error(&parsed);
    assert_eq!(e.line, 13, "{e}");
    assert_eq!(e.path, "spec.ingress[0].toPorts[0].rules.http[0].path");
    assert!(e.message.contains("is not a valid regular expression") && e.message.contains("size limit"), "{e}");
}

#[test]
fn policy_with_5000_rules_is_refused() {
    let mut rules = String::from("  ingress:\n");
    for i in 0..5000 {
        rules.push_str(&format!("  - toPorts: [{{ports: [{{port: \"{}\"}}]}}]\n", 1000 + i));
    }
    let parsed = parse_timed(&cnp(&rules));
    let e = only_error(&parsed);
    assert_eq!(e.to_string(), format!("{FILE}:1: 5000 rules exceed the limit of 4096 per policy"));
    // At the limit it is accepted.
    let mut rules = String::from("  ingress:\n");
    for i in 0..4096 {
        rules.push_str(&format!("  - toPorts: [{{ports: [{{port: \"{}\"}}]}}]\n", 1000 + i));
    }
    let parsed = parse_timed(&cnp(&rules));
    assert!(!parsed.has_errors(), "{:?}", parsed.errors().next());
    assert_eq!(parsed.set.policies.len(), 1);
}

#[test]
fn duplicate_keys_are_refused_with_both_lines() {
    let text = cnp(
        "  ingress:\n  - fromEndpoints: [{matchLabels: {app: a}}]\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: b}}]\n",
    );
    let parsed = parse_timed(&text);
    let e = only_error(&parsed);
    assert_eq!(e.to_string(), format!("{FILE}:10: duplicate key \"ingress\" (first on line 8)"));
}

#[test]
fn hostile_file_does_not_hide_the_good_ones() {
    // One bad file among good ones: its error is reported, the others still parse.
    let good = cnp("  ingress: [{}]");
    let bad = "a: &a [*a]\n";
    let parsed = parse_policies(
        &[SourceFile { name: "good.yaml", text: &good }, SourceFile { name: FILE, text: bad }],
        &ParseOptions::default(),
    );
    assert_eq!(parsed.set.policies.len(), 1);
    let errors: Vec<_> = parsed.errors().collect();
    assert_eq!(errors.len(), 1, "{:#?}", parsed.diagnostics);
    assert_eq!(errors[0].file, FILE);
    assert_eq!(errors[0].line, 1);
}

#[test]
fn binary_garbage_and_tabs_are_errors_not_panics() {
    for text in
        ["\u{1}\u{2}", "a:\n\tb: 1\n", "- [\n", "{a: 1", "'unterminated", "a: *missing\n", "%YAML 9.9\n---\na: 1\n"]
    {
        let parsed = parse_timed(text);
        let e = only_error(&parsed);
        assert!(e.line >= 1, "{text:?}: {e}");
        assert!(!e.message.is_empty());
    }
}
#[test]
fn nul_byte_does_not_silently_end_the_file() {
    // yaml-rust2 reads NUL as the end of the stream: the second policy would vanish unnoticed.
    let second = cnp("  egress: [{}]").replace("name: p", "name: q");
    let text = format!("{}\n---\n\u{0}\n{second}", cnp("  ingress: [{}]"));
    let parsed = parse_timed(&text);
    assert_eq!(only_error(&parsed).to_string(), format!("{FILE}:10: control character U+0000 is not allowed in YAML"));
    let parsed = parse_timed("apiVersion: v1\nkind: List\nitems: []\n# bell \u{7}\n");
    assert_eq!(only_error(&parsed).to_string(), format!("{FILE}:4: control character U+0007 is not allowed in YAML"));
}
