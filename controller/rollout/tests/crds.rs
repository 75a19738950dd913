//! crds/*.yaml are generated from the Rust types. This test fails when they drift;
//! `make crds` (UPDATE_CRDS=1) rewrites them.

use std::path::PathBuf;

use kube::CustomResourceExt;
use palisade_policy::yaml::to_yaml;
use palisade_rollout::crd::{PolicyAuditReport, PolicyDecision, PolicyRevision, PolicyRollout};

const HEADER: &str = "# Generated from controller/rollout/src/crd.rs by `make crds`. Do not edit.\n";

fn rendered() -> Vec<(&'static str, String)> {
    [
        ("policyrollouts.yaml", PolicyRollout::crd()),
        ("policyrevisions.yaml", PolicyRevision::crd()),
        ("policyauditreports.yaml", PolicyAuditReport::crd()),
        ("policydecisions.yaml", PolicyDecision::crd()),
    ]
    .into_iter()
    .map(|(file, crd)| (file, format!("{HEADER}{}", to_yaml(&serde_json::to_value(&crd).expect("CRD serializes")))))
    .collect()
}

#[test]
fn crd_files_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    let update = std::env::var_os("UPDATE_CRDS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (file, yaml) in rendered() {
        let path = dir.join(file);
        if update {
            std::fs::write(&path, &yaml).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
            stale.push(file);
        }
    }
    assert!(stale.is_empty(), "crds/{stale:?} differ from the Rust types; run `make crds` and commit the result");
}
