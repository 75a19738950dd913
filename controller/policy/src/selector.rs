//! Label selectors: matchLabels AND matchExpressions, with Cilium's label sources.
use std::collections::BTreeSet;
use std::fmt;

use crate::labels::{LabelSet, Source};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub source: Source,
    pub key: String,
    pub operator: Operator,
    pub values: BTreeSet<String>,
}

impl Requirement {
    pub fn equals(source: Source, key: impl Into<String>, value: impl Into<String>) -> Self {
        Requirement { source, key: key.into(), operator: Operator::In, values: BTreeSet::from([value.into()]) }
    }

    pub fn exists(source: Source, key: impl Into<String>) -> Self {
        Requirement { source, key: key.into(), operator: Operator::Exists, values: BTreeSet::new() }
    }

    /// Kubernetes semantics: `NotIn` and `DoesNotExist` also match when the key is absent.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        let value = labels.get(self.source, &self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A conjunction of requirements; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    requirements: BTreeSet<Requirement>,
}

impl Selector {
    pub fn new(requirements: impl IntoIterator<Item = Requirement>) -> Self {
        Selector { requirements: requirements.into_iter().collect() }
    }

    pub fn with(mut self, requirement: Requirement) -> Self {
        self.requirements.insert(requirement);
        self
    }

    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn requirements(&self) -> impl Iterator<Item = &Requirement> {
        self.requirements.iter()
    }

    /// Whether some requirement constrains `key` from `source` (or from any source).
    pub fn mentions(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| r.key == key && matches!(r.source, Source::Any | Source::K8s))
    }

    pub fn mentions_source(&self, source: Source) -> bool {
        self.requirements.iter().any(|r| r.source == source)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let key = format!("{}:{}", r.source.as_str(), r.key);
            let values = r.values.iter().cloned().collect::<Vec<_>>().join(",");
            match r.operator {
                Operator::In if r.values.len() == 1 => write!(f, "{key}={values}")?,
                Operator::In => write!(f, "{key} in ({values})")?,
                Operator::NotIn => write!(f, "{key} notin ({values})")?,
                Operator::Exists => write!(f, "{key}")?,
                Operator::DoesNotExist => write!(f, "!{key}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        let mut set = LabelSet::default();
        for (k, v) in pairs {
            set.insert(Source::K8s, *k, *v);
        }
        set
    }

    #[test]
    fn operators_follow_kubernetes() {
        let set = labels(&[("app", "db"), ("tier", "backend")]);
        let req = |op, values: &[&str]| Requirement {
            source: Source::Any,
            key: "app".into(),
            operator: op,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        assert!(req(Operator::In, &["db", "web"]).matches(&set));
        assert!(!req(Operator::NotIn, &["db"]).matches(&set));
        assert!(req(Operator::Exists, &[]).matches(&set));
        assert!(!req(Operator::DoesNotExist, &[]).matches(&set));
        let empty = LabelSet::default();
        assert!(req(Operator::NotIn, &["db"]).matches(&empty), "NotIn matches a missing key");
        assert!(req(Operator::DoesNotExist, &[]).matches(&empty));
        assert!(Selector::default().matches(&empty), "the empty selector matches everything");
    }

    #[test]
    fn source_restricts_matching() {
        let mut set = LabelSet::default();
        set.insert(Source::Reserved, "host", "");
        assert!(Requirement::exists(Source::Reserved, "host").matches(&set));
        assert!(Requirement::exists(Source::Any, "host").matches(&set));
        assert!(!Requirement::exists(Source::K8s, "host").matches(&set));
    }

    /// A deliberately naive restatement of label-selector semantics.
    fn reference(reqs: &[(u8, u8, Vec<u8>)], set: &[(u8, u8)]) -> bool {
        reqs.iter().all(|(key, op, values)| {
            let value = set.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v);
            match op % 4 {
                0 => matches!(value, Some(v) if values.contains(&v)),
                1 => !matches!(value, Some(v) if values.contains(&v)),
                2 => value.is_some(),
                _ => value.is_none(),
            }
        })
    }

    proptest! {
        #[test]
        fn selector_agrees_with_reference(
            reqs in prop::collection::vec((0u8..4, 0u8..4, prop::collection::vec(0u8..4, 1..3)), 0..4),
            set in prop::collection::vec((0u8..4, 0u8..4), 0..5),
        ) {
            let mut labels = LabelSet::default();
            for (k, v) in &set {
                labels.insert(Source::K8s, format!("k{k}"), format!("v{v}"));
            }
            let selector = Selector::new(reqs.iter().map(|(k, op, values)| Requirement {
                source: Source::Any,
                key: format!("k{k}"),
                operator: [Operator::In, Operator::NotIn, Operator::Exists, Operator::DoesNotExist][(*op % 4) as usize],
                values: values.iter().map(|v| format!("v{v}")).collect(),
            }));
            prop_assert_eq!(selector.matches(&labels), reference(&reqs, &set));
        }
    }
}
