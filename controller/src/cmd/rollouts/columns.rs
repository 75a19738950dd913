//! The CRD's printer columns and the JSONPath that reads them, as kubectl does.
use jsonpath_rust::JsonPath;
use kube::CustomResourceExt;
use palisade_rollout::crd::PolicyRollout;
use serde_json::Value as Json;

/// The printer columns kubectl shows for PolicyRollouts (priority 0), from the CRD itself.
pub fn printer_columns() -> Vec<PrinterColumn> {
    printer_columns_of::<PolicyRollout>()
}

/// The printer columns kubectl shows for a kind (priority 0), from its CRD.
pub fn printer_columns_of<K: CustomResourceExt>() -> Vec<PrinterColumn> {
    let crd = K::crd();
    let version = crd.spec.versions.iter().find(|v| v.served).expect("the CRD serves a version");
    version
        .additional_printer_columns
        .iter()
        .flatten()
        .filter(|c| c.priority.unwrap_or(0) == 0)
        .map(|c| PrinterColumn { name: c.name.clone(), type_: c.type_.clone(), json_path: c.json_path.clone() })
        .collect()
}

pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub json_path: String,
}

/// A printer column's JSONPath, as kubectl reads it (`.a.b`, `[?(@.key=="value")]`, with `$`
/// implied): the first value it selects, or None when it selects nothing or does not parse.
pub fn json_path<'a>(value: &'a Json, path: &str) -> Option<&'a Json> {
    let path = if path.starts_with('$') { path.to_owned() } else { format!("${path}") };
    value.query(&path).ok()?.into_iter().next()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_path_reads_every_printer_column() {
        let value = json!({
            "metadata": {"creationTimestamp": "2025-01-01T00:00:00Z"},
            "status": {
                "phase": "Auditing",
                "newDenies": 3,
                "enforcedRevision": {"display": "main@a1b2c3d"},
                "candidateRevision": {"display": "main@b2c3d4e"},
                "conditions": [{"type": "Stalled", "status": "False"}, {"type": "Ready", "status": "True"}],
            },
        });
        for column in printer_columns() {
            assert!(json_path(&value, &column.json_path).is_some(), "{} ({}) resolves", column.name, column.json_path);
        }
        assert_eq!(json_path(&value, ".status.conditions[?(@.type==\"Ready\")].status"), Some(&json!("True")));
        assert_eq!(json_path(&value, ".status.missing"), None);
    }
}
