//! The content digest of a revision's policies, computed the same way where a revision is made
//! (the controller, from a commit) and where it is loaded (the agent, which refuses a
//! PolicyRevision whose policies do not hash to its `spec.digest`).
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::crd::PolicyRevisionSpec;

/// A PolicyRevision whose policies are not what its digest names.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("policy {index} ({kind} {name}): content is not JSON: {message}")]
    NotJson { index: usize, kind: String, name: String, message: String },
    #[error("policies hash to {actual}, not to spec.digest {declared}")]
    Mismatch { declared: String, actual: String },
}

/// A policy's identity as it is hashed: kind, namespace (null for cluster-wide), name.
#[derive(Serialize)]
struct PolicyIdentity<'a> {
    kind: &'a str,
    namespace: Option<&'a str>,
    name: &'a str,
}

/// sha256 over a policy's identity and its object as written, keys sorted so that formatting and
/// key order do not matter.
pub fn policy_digest(kind: &str, namespace: Option<&str>, name: &str, object: &Value) -> [u8; 32] {
    // Three strings serialize infallibly.
    let mut text = serde_json::to_string(&PolicyIdentity { kind, namespace, name }).unwrap_or_default();
    text.push('\n');
    canonical_json(object, &mut text);
    Sha256::digest(text.as_bytes()).into()
}

/// `sha256:<hex>` over the policies' digests, in the order given (policy id order).
pub fn combine<'a>(digests: impl IntoIterator<Item = &'a [u8; 32]>) -> String {
    let mut hasher = Sha256::new();
    for digest in digests {
        hasher.update(digest);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

impl PolicyRevisionSpec {
    /// The digest of `policies` as listed.
    pub fn content_digest(&self) -> Result<String, DigestError> {
        let digests = self
            .policies
            .iter()
            .enumerate()
            .map(|(index, p)| {
                let object: Value = serde_json::from_str(&p.content).map_err(|e| DigestError::NotJson {
                    index,
                    kind: p.kind.clone(),
                    name: p.name.clone(),
                    message: e.to_string(),
                })?;
                Ok(policy_digest(&p.kind, p.namespace.as_deref(), &p.name, &object))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(combine(&digests))
    }

    /// Whether `policies` hash to `digest`: a revision is immutable in effect.
    pub fn verify_digest(&self) -> Result<(), DigestError> {
        let actual = self.content_digest()?;
        if actual != self.digest {
            return Err(DigestError::Mismatch { declared: self.digest.clone(), actual });
        }
        Ok(())
    }
}

/// JSON with object keys sorted and no whitespace. Depth is bounded by the parsers' limits.
fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical_json(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PolicyDocument;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a: Value = serde_json::from_str(r#"{"b": [{"y": 1, "x": "s"}], "a": null}"#).unwrap();
        let mut out = String::new();
        canonical_json(&a, &mut out);
        assert_eq!(out, r#"{"a":null,"b":[{"x":"s","y":1}]}"#);
    }

    fn spec(content: &str) -> PolicyRevisionSpec {
        let document = PolicyDocument {
            kind: "CiliumNetworkPolicy".into(),
            name: "db".into(),
            namespace: Some("shop".into()),
            content: content.into(),
        };
        PolicyRevisionSpec {
            rollout: "db".into(),
            commit: "0".repeat(40),
            display: "main@0000000".into(),
            digest: String::new(),
            policy_count: 1,
            policies: vec![document],
        }
    }

    #[test]
    fn a_revision_verifies_against_its_own_digest_only() {
        let mut good = spec(r#"{"spec": {"endpointSelector": {}}, "kind": "CiliumNetworkPolicy"}"#);
        good.digest = good.content_digest().unwrap();
        assert_eq!(good.verify_digest(), Ok(()));
        let mut reformatted = good.clone();
        reformatted.policies[0].content = r#"{"kind":"CiliumNetworkPolicy","spec":{"endpointSelector":{}}}"#.into();
        assert_eq!(reformatted.verify_digest(), Ok(()), "formatting and key order are not content");
        let mut edited = good.clone();
        edited.policies[0].content = r#"{"kind": "CiliumNetworkPolicy", "spec": {}}"#.into();
        assert!(matches!(edited.verify_digest(), Err(DigestError::Mismatch { .. })));
        let mut renamed = good.clone();
        renamed.policies[0].name = "web".into();
        assert!(matches!(renamed.verify_digest(), Err(DigestError::Mismatch { .. })));
        let mut yaml = good;
        yaml.policies[0].content = "kind: CiliumNetworkPolicy".into();
        assert!(matches!(yaml.verify_digest(), Err(DigestError::NotJson { index: 0, .. })));
    }
}
