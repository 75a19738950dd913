//! `-l/--selector`: a label selector in kubectl's syntax. The API server evaluates it for a
//! cluster; local mode evaluates it here, the same way (k8s.io/apimachinery/pkg/labels).
use std::collections::BTreeMap;

use anyhow::{Result, bail};

/// Every requirement must hold.
#[derive(Debug, PartialEq)]
pub struct Selector(Vec<Requirement>);

#[derive(Debug, PartialEq)]
enum Requirement {
    Exists(String),
    DoesNotExist(String),
    /// `key=value`, `key==value`.
    Equals(String, String),
    /// `key!=value`: also true without the label.
    NotEquals(String, String),
    In(String, Vec<String>),
    /// `key notin (...)`: also true without the label.
    NotIn(String, Vec<String>),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

impl Selector {
    /// Parses `text` (`app=web,tier!=db`, `env in (prod, staging)`, `!canary`); the empty text
    /// selects everything.
    pub fn parse(text: &str) -> Result<Selector> {
        let mut requirements = Vec::new();
        for part in split(text)? {
            let part = part.trim();
            if part.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                bail!("unable to parse requirement: found ',', expected: identifier");
            }
            requirements.push(requirement(part)?);
        }
        Ok(Selector(requirements))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::GreaterThan(k, n) => labels.get(k).and_then(|l| l.parse::<i64>().ok()).is_some_and(|l| l > *n),
            Requirement::LessThan(k, n) => labels.get(k).and_then(|l| l.parse::<i64>().ok()).is_some_and(|l| l < *n),
        })
    }
}

/// The requirements: split at the commas outside parentheses.
fn split(text: &str) -> Result<Vec<&str>> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' if depth == 0 => depth = 1,
            '(' => bail!("unable to parse requirement: found '(', expected: ')'"),
            ')' if depth == 1 => depth = 0,
            ')' => bail!("unable to parse requirement: found ')' without '('"),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        bail!("unable to parse requirement: found end of input, expected: ')'");
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn requirement(text: &str) -> Result<Requirement> {
    if let Some(key) = text.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key_of(key.trim())?));
    }
    let end = text.find(|c: char| c.is_whitespace() || "=!<>(".contains(c)).unwrap_or(text.len());
    let key = key_of(&text[..end])?;
    let rest = text[end..].trim_start();
    let value = |v: &str| value_of(v.trim());
    if rest.is_empty() {
        return Ok(Requirement::Exists(key));
    }
    if let Some(v) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        return Ok(Requirement::Equals(key, value(v)?));
    }
    if let Some(v) = rest.strip_prefix("!=") {
        return Ok(Requirement::NotEquals(key, value(v)?));
    }
    for (op, greater) in [('>', true), ('<', false)] {
        if let Some(v) = rest.strip_prefix(op) {
            let Ok(n) = v.trim().parse::<i64>() else {
                bail!("unable to parse requirement: for '{op}', the value must be an integer, not {:?}", v.trim());
            };
            return Ok(if greater { Requirement::GreaterThan(key, n) } else { Requirement::LessThan(key, n) });
        }
    }
    for (op, not) in [("notin", true), ("in", false)] {
        if let Some(set) = rest.strip_prefix(op).map(str::trim_start).filter(|s| s.starts_with('(')) {
            let Some(inner) = set.strip_prefix('(').and_then(|s| s.strip_suffix(')')) else {
                bail!("unable to parse requirement: {op} takes a set of values in parentheses: {text:?}");
            };
            let values = inner.split(',').map(|v| value_of(v.trim())).collect::<Result<Vec<_>>>()?;
            return Ok(if not { Requirement::NotIn(key, values) } else { Requirement::In(key, values) });
        }
    }
    bail!("unable to parse requirement: {text:?}: expected =, ==, !=, in, notin, > or < after the key")
}

/// A label key: `[prefix/]name`, the name made of alphanumerics, `-`, `_` and `.`.
fn key_of(key: &str) -> Result<String> {
    let name = key.rsplit_once('/').map_or(key, |(_, name)| name);
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if name.is_empty() || !key.chars().all(|c| allowed(c) || c == '/') || key.matches('/').count() > 1 {
        bail!("unable to parse requirement: invalid label key {key:?}");
    }
    Ok(key.to_string())
}

/// A label value: empty, or alphanumerics, `-`, `_` and `.`.
fn value_of(value: &str) -> Result<String> {
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        bail!("unable to parse requirement: invalid label value {value:?}");
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selects_as_the_api_server_does() {
        let web = labels(&[("palisade.dev/rollout", "web"), ("tier", "front"), ("replicas", "3")]);
        let api = labels(&[("palisade.dev/rollout", "api")]);
        let cases: [(&str, bool, bool); 14] = [
            ("", true, true),
            ("palisade.dev/rollout=web", true, false),
            ("palisade.dev/rollout == web", true, false),
            ("palisade.dev/rollout!=web", false, true),
            ("tier", true, false),
            ("!tier", false, true),
            ("tier!=back", true, true),
            ("palisade.dev/rollout in (web, db)", true, false),
            ("palisade.dev/rollout notin (web)", false, true),
            ("tier notin (front)", false, true),
            ("palisade.dev/rollout in (web,api),!canary", true, true),
            ("replicas>2", true, false),
            ("replicas<2", false, false),
            ("tier=front,palisade.dev/rollout=api", false, false),
        ];
        for (text, on_web, on_api) in cases {
            let selector = Selector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((selector.matches(&web), selector.matches(&api)), (on_web, on_api), "{text}");
        }
        for bad in ["a=b,", "a in (b", "a in b", "a=(b)", "a b", "x>y", "=b", "a/b/c=d", "a=b c"] {
            let error = Selector::parse(bad).expect_err(bad).to_string();
            assert!(error.starts_with("unable to parse requirement"), "{bad}: {error}");
        }
    }
}
