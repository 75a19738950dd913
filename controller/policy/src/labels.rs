//! Labels with a source, as Cilium keeps them: `k8s:app=db`, `reserved:host`, `cidr:10.0.0.0/8`.
use std::collections::BTreeMap;
use std::fmt;

/// Where a label comes from. A selector key without a source means `any`: it matches every source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Any,
    K8s,
    Reserved,
    Cidr,
    Container,
    Unspec,
    /// A Node's labels, on the host identity and on remote-node identities (Cilium's `node:`).
    Node,
}

impl Source {
    pub fn parse(name: &str) -> Option<Source> {
        Some(match name {
            "any" => Source::Any,
            "k8s" => Source::K8s,
            "reserved" => Source::Reserved,
            "cidr" => Source::Cidr,
            "container" => Source::Container,
            "unspec" => Source::Unspec,
            "node" => Source::Node,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Any => "any",
            Source::K8s => "k8s",
            Source::Reserved => "reserved",
            Source::Cidr => "cidr",
            Source::Container => "container",
            Source::Unspec => "unspec",
            Source::Node => "node",
        }
    }
}

/// Label keys Palisade derives from Kubernetes metadata.
pub const NAMESPACE_KEY: &str = "io.kubernetes.pod.namespace";
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
pub const SERVICE_ACCOUNT_KEY: &str = "io.cilium.k8s.policy.serviceaccount";
pub const CLUSTER_KEY: &str = "io.cilium.k8s.policy.cluster";
pub const CLUSTER_NAME: &str = "default";

/// Splits `source:key` into its parts; a key without a known source prefix has source `any`.
/// Returns `None` for an unknown source prefix such as `foo:app`.
pub fn parse_key(raw: &str) -> Option<(Source, &str)> {
    match raw.split_once(':') {
        Some((source, key)) => Source::parse(source).map(|s| (s, key)),
        None => Some((Source::Any, raw)),
    }
}

/// The security-relevant labels of an identity: key → (source, value).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSet(BTreeMap<String, (Source, String)>);

impl LabelSet {
    pub fn insert(&mut self, source: Source, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), (source, value.into()));
    }

    /// The value of `key` if its source is accepted by `source` (`Any` accepts every source).
    pub fn get(&self, source: Source, key: &str) -> Option<&str> {
        self.0.get(key).filter(|(s, _)| source == Source::Any || *s == source).map(|(_, v)| v.as_str())
    }

    pub fn has_source(&self, source: Source) -> bool {
        self.0.values().any(|(s, _)| *s == source)
    }

    pub fn iter(&self) -> impl Iterator<Item = (Source, &str, &str)> {
        self.0.iter().map(|(k, (s, v))| (*s, k.as_str(), v.as_str()))
    }

    /// The labels a user wrote on the pod (source `k8s`, not derived from metadata).
    pub fn user_labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter().filter(|(s, k, _)| *s == Source::K8s && !is_derived_key(k)).map(|(_, k, v)| (k, v))
    }
}

fn is_derived_key(key: &str) -> bool {
    key == NAMESPACE_KEY || key == SERVICE_ACCOUNT_KEY || key == CLUSTER_KEY || key.starts_with(NAMESPACE_LABELS_PREFIX)
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (source, key, value)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{}", source.as_str(), key)?;
            if !value.is_empty() {
                write!(f, "={value}")?;
            }
        }
        Ok(())
    }
}

/// Pod labels that say nothing about security and would only multiply identities (Cilium's
/// default identity-relevant label filter).
pub fn is_identity_relevant(key: &str) -> bool {
    !(key == "pod-template-hash"
        || key == "controller-revision-hash"
        || key == "pod-template-generation"
        || key == "statefulset.kubernetes.io/pod-name"
        || key == "apps.kubernetes.io/pod-index"
        || key == "batch.kubernetes.io/controller-uid"
        || key == "controller-uid"
        || key == "batch.kubernetes.io/job-name"
        || key == "job-name"
        || key.starts_with("io.kubernetes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_source() {
        assert_eq!(parse_key("k8s:app"), Some((Source::K8s, "app")));
        assert_eq!(parse_key("app.kubernetes.io/name"), Some((Source::Any, "app.kubernetes.io/name")));
        assert_eq!(parse_key("reserved:host"), Some((Source::Reserved, "host")));
        assert_eq!(parse_key("bogus:app"), None);
    }

    #[test]
    fn any_source_matches_every_source() {
        let mut set = LabelSet::default();
        set.insert(Source::K8s, "app", "db");
        assert_eq!(set.get(Source::Any, "app"), Some("db"));
        assert_eq!(set.get(Source::K8s, "app"), Some("db"));
        assert_eq!(set.get(Source::Reserved, "app"), None);
    }
}
