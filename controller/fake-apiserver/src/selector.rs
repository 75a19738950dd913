//! Which objects a list or watch asks for: a namespace, a `labelSelector` (equality and
//! set-based requirements, in the forms kube-rs writes them) and a `fieldSelector` (`=`, `==` and
//! `!=` on dotted paths such as `spec.nodeName` or `metadata.name`).

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq)]
enum Requirement {
    /// `key=value`, `key==value`, `key in (a,b)`.
    In(String, Vec<String>),
    /// `key!=value`, `key notin (a,b)`: also true of an object without the label.
    NotIn(String, Vec<String>),
    /// `key`
    Exists(String),
    /// `!key`
    Absent(String),
}

impl Requirement {
    fn parse(term: &str) -> Requirement {
        let values = |list: &str| -> Vec<String> {
            let list = list.trim().trim_start_matches('(').trim_end_matches(')');
            list.split(',').map(|v| v.trim().to_string()).collect()
        };
        if let Some(key) = term.strip_prefix('!') {
            return Requirement::Absent(key.trim().into());
        }
        if let Some((key, list)) = term.split_once(" notin ") {
            return Requirement::NotIn(key.trim().into(), values(list));
        }
        if let Some((key, list)) = term.split_once(" in ") {
            return Requirement::In(key.trim().into(), values(list));
        }
        if let Some((key, value)) = term.split_once("!=") {
            return Requirement::NotIn(key.trim().into(), vec![value.trim().into()]);
        }
        match term.split_once('=') {
            Some((key, value)) => Requirement::In(key.trim().into(), vec![value.trim_start_matches('=').trim().into()]),
            None => Requirement::Exists(term.trim().into()),
        }
    }

    fn matches(&self, labels: &Value) -> bool {
        let label = |key: &str| labels.get(key).and_then(Value::as_str).map(String::from);
        match self {
            Requirement::In(key, values) => label(key).is_some_and(|v| values.contains(&v)),
            Requirement::NotIn(key, values) => label(key).is_none_or(|v| !values.contains(&v)),
            Requirement::Exists(key) => label(key).is_some(),
            Requirement::Absent(key) => label(key).is_none(),
        }
    }
}

/// Splits a label selector at the commas between requirements, not those inside `(a,b)`.
fn terms(selector: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

/// A field requirement: the value at a dotted path equals (or, `!=`, differs from) a string.
#[derive(Clone, Debug)]
struct FieldRequirement {
    path: String,
    value: String,
    equal: bool,
}

impl FieldRequirement {
    fn parse(term: &str) -> FieldRequirement {
        let (path, value, equal) = match term.split_once("!=") {
            Some((path, value)) => (path, value, false),
            None => {
                let (path, value) = term.split_once('=').unwrap_or((term, ""));
                (path, value.trim_start_matches('='), true)
            }
        };
        FieldRequirement { path: path.trim().into(), value: value.trim().into(), equal }
    }

    fn matches(&self, object: &Value) -> bool {
        let found = self.path.split('.').try_fold(object, |v, key| v.get(key));
        let text = match found {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        (text == self.value) == self.equal
    }
}

/// What a list or watch selects.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    /// None: every namespace.
    namespace: Option<String>,
    labels: Vec<Requirement>,
    fields: Vec<FieldRequirement>,
}

impl Filter {
    pub(crate) fn new(namespace: Option<String>, labels: &str, fields: &str) -> Filter {
        Filter {
            namespace,
            labels: terms(labels).into_iter().map(Requirement::parse).collect(),
            fields: terms(fields).into_iter().map(FieldRequirement::parse).collect(),
        }
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        self.namespace.as_ref().is_none_or(|n| n == namespace)
            && self.labels.iter().all(|r| r.matches(&object["metadata"]["labels"]))
            && self.fields.iter().all(|r| r.matches(object))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::Filter;

    #[test]
    fn label_and_field_selectors_as_kube_rs_writes_them() {
        let pod = json!({"metadata": {"name": "api", "namespace": "shop", "labels": {"app": "api", "tier": "web"}},
            "spec": {"nodeName": "n1"}});
        let selects = |labels: &str, fields: &str| Filter::new(Some("shop".into()), labels, fields).matches(&pod);
        for (labels, fields, expected) in [
            ("", "", true),
            ("app=api", "", true),
            ("app==api,tier", "", true),
            ("app!=api", "", false),
            ("app in (db, api),!canary", "", true),
            ("app notin (api),tier", "", false),
            ("canary notin (yes)", "", true),
            ("zone", "", false),
            ("", "spec.nodeName=n1,metadata.name==api", true),
            ("", "spec.nodeName!=n1", false),
            ("", "spec.nodeName=n2", false),
        ] {
            assert_eq!(selects(labels, fields), expected, "labels {labels:?} fields {fields:?}");
        }
        assert!(!Filter::new(Some("other".into()), "", "").matches(&pod));
        assert!(Filter::new(None, "", "metadata.namespace=shop").matches(&pod));
    }
}
