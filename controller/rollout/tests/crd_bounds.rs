//! The generated CRDs (crds/*.yaml) bound every string, list and map, so that the API server can
//! estimate the cost of their CEL rules and admits them; and every rule runs over bounded data
//! only.

use std::path::PathBuf;

use palisade_policy::yaml::{Limits, parse_documents};
use serde_json::Value as Json;

const CRDS: [&str; 4] = ["policyrollouts", "policyrevisions", "policyauditreports", "policydecisions"];

/// Each CRD's version schemas, by file and version.
fn schemas() -> Vec<(String, Json)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    let mut schemas = Vec::new();
    for crd in CRDS {
        let path = dir.join(format!("{crd}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let documents = parse_documents(&text, &Limits::default()).unwrap_or_else(|e| panic!("{crd}: {e}"));
        for version in documents[0].to_json()["spec"]["versions"].as_array().expect("versions") {
            let schema = version["schema"]["openAPIV3Schema"].clone();
            schemas.push((format!("{crd} {}", version["name"].as_str().unwrap_or_default()), schema));
        }
    }
    assert_eq!(schemas.len(), CRDS.len(), "one version each");
    schemas
}

/// The paths in `schema`'s subtree of strings without maxLength (or enum), lists without
/// maxItems, maps without maxProperties, and fields left free-form.
fn unbounded(schema: &Json, path: &str, found: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == true || schema["x-kubernetes-int-or-string"] == true {
        found.push(format!("{path} (free-form)"));
    }
    match schema["type"].as_str() {
        Some("string") if schema["maxLength"].is_null() && schema["enum"].is_null() => {
            found.push(format!("{path} (string without maxLength)"))
        }
        Some("array") => {
            if schema["maxItems"].is_null() {
                found.push(format!("{path} (list without maxItems)"));
            }
            unbounded(&schema["items"], &format!("{path}[]"), found);
        }
        Some("object") => {
            if let Some(values) = schema["additionalProperties"].as_object() {
                if schema["maxProperties"].is_null() {
                    found.push(format!("{path} (map without maxProperties)"));
                }
                unbounded(&Json::Object(values.clone()), &format!("{path}{{}}"), found);
            }
        }
        _ => {}
    }
    for (name, property) in schema["properties"].as_object().into_iter().flatten() {
        unbounded(property, &format!("{path}.{name}"), found);
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        for (i, branch) in schema[combinator].as_array().into_iter().flatten().enumerate() {
            unbounded(branch, &format!("{path}<{combinator}{i}>"), found);
        }
    }
}

/// Every schema node carrying x-kubernetes-validations, with its path.
fn rule_nodes<'a>(schema: &'a Json, path: String, found: &mut Vec<(String, &'a Json)>) {
    if schema["x-kubernetes-validations"].is_array() {
        found.push((path.clone(), schema));
    }
    for (name, property) in schema["properties"].as_object().into_iter().flatten() {
        rule_nodes(property, format!("{path}.{name}"), found);
    }
    for nested in ["items", "additionalProperties"] {
        if schema[nested].is_object() {
            rule_nodes(&schema[nested], format!("{path}/{nested}"), found);
        }
    }
}

#[test]
fn every_string_list_and_map_is_bounded() {
    for (crd, schema) in schemas() {
        // metadata is the API server's own, bounded by its validation.
        let mut found = Vec::new();
        for (name, property) in schema["properties"].as_object().expect("properties") {
            if name != "metadata" {
                unbounded(property, name, &mut found);
            }
        }
        assert!(found.is_empty(), "{crd}: unbounded fields:\n{}", found.join("\n"));
    }
}

#[test]
fn every_cel_rule_runs_over_bounded_fields_only() {
    let mut rules = 0;
    for (crd, schema) in schemas() {
        let mut nodes = Vec::new();
        rule_nodes(&schema, String::new(), &mut nodes);
        for (path, node) in nodes {
            let mut found = Vec::new();
            unbounded(node, &path, &mut found);
            assert!(found.is_empty(), "{crd}: a rule at {path} runs over unbounded fields: {found:?}");
            rules += node["x-kubernetes-validations"].as_array().map_or(0, Vec::len);
        }
    }
    // The URL scheme, the one-ref rule, durations, the commit, expected-deny selectors, and the
    // revision's immutable fields: a schema that lost its rules would pass the loop trivially.
    assert!(rules >= 10, "only {rules} rules found");
}

#[test]
fn a_revision_is_immutable_field_by_field_not_as_a_whole() {
    let revision = schemas().into_iter().find(|(crd, _)| crd.starts_with("policyrevisions")).unwrap().1;
    let spec = &revision["properties"]["spec"];
    assert!(spec["x-kubernetes-validations"].is_null(), "no rule over the whole spec and its policies");
    for field in ["rollout", "commit", "digest"] {
        let rules = spec["properties"][field]["x-kubernetes-validations"].as_array().expect(field);
        assert!(rules.iter().any(|r| r["rule"] == "self == oldSelf"), "{field}: {rules:?}");
    }
}
