//! What the L7 rules decide for one request or one DNS query: one implementation for `trace`
//! and the node's proxy. HTTP follows Cilium's `rules.http` as Envoy applies it (method, path
//! and host are full-match regular expressions, `headers` and `headerMatches` compare
//! case-insensitive names and exact values); DNS follows `matchName` and `matchPattern`.
use crate::model::{FqdnMatch, HeaderMatch, HttpMatch, Mismatch};

/// A request the L7 rules judge: an HTTP request, or a DNS query for a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L7Request {
    Http(HttpRequest),
    Dns(String),
}

/// An HTTP request as the rules see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
}

/// What a matching rule does to the request on its way upstream: the `headerMatches` whose
/// value mismatched and whose `mismatch` action still lets the rule match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpRewrite {
    /// Headers to add (`ADD`) or to set, replacing every value (`REPLACE`).
    pub add: Vec<(String, String)>,
    pub replace: Vec<(String, String)>,
    /// Headers to remove (`DELETE`).
    pub delete: Vec<String>,
    /// Mismatches to log (`LOG`): "name: have (want value)".
    pub logged: Vec<String>,
}

impl HttpRequest {
    /// `"GET /path"` plus `"Name: value"` headers.
    pub fn parse(request: &str, headers: &[String]) -> Result<HttpRequest, String> {
        let (method, path) = request
            .split_once(' ')
            .filter(|(m, p)| !m.is_empty() && p.starts_with('/'))
            .ok_or_else(|| format!("{request:?} is not \"METHOD /path\""))?;
        let headers = headers
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .ok_or_else(|| format!("{h:?} is not \"Name: value\""))
            })
            .collect::<Result<_, _>>()?;
        Ok(HttpRequest { method: method.to_string(), path: path.to_string(), headers })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The rewrite a matching `rule` makes, or `None` when the rule does not match.
    pub fn judge(&self, rule: &HttpMatch) -> Option<HttpRewrite> {
        let full = |re: &Option<regex::Regex>, s: &str| re.as_ref().is_none_or(|re| re.is_match(s));
        let matched = full(&rule.method, &self.method)
            && full(&rule.path, &self.path)
            && rule.host.as_ref().is_none_or(|re| self.header("host").is_some_and(|h| re.is_match(h)))
            && rule.headers.iter().all(|(name, value)| match (self.header(name), value) {
                (Some(have), Some(want)) => have == want,
                (have, None) => have.is_some(),
                (None, _) => false,
            });
        if !matched {
            return None;
        }
        let mut rewrite = HttpRewrite::default();
        for header in &rule.header_matches {
            if !self.header_mismatch(header, &mut rewrite) {
                return None;
            }
        }
        Some(rewrite)
    }

    /// Whether the rule can still match given `header`; records its mismatch action.
    fn header_mismatch(&self, header: &HeaderMatch, rewrite: &mut HttpRewrite) -> bool {
        let have = self.header(&header.name);
        let matches = match (&header.value, have) {
            (None, have) => have.is_some(),
            (Some(want), Some(have)) => have == want,
            (Some(_), None) => false,
        };
        if matches {
            return true;
        }
        let value = header.value.clone().unwrap_or_default();
        match header.mismatch {
            None => return false,
            Some(Mismatch::Log) => {
                rewrite.logged.push(format!("{}: {} (want {value:?})", header.name, have.unwrap_or("<absent>")))
            }
            Some(Mismatch::Add) => rewrite.add.push((header.name.clone(), value)),
            Some(Mismatch::Delete) => rewrite.delete.push(header.name.clone()),
            Some(Mismatch::Replace) => rewrite.replace.push((header.name.clone(), value)),
        }
        true
    }
}

impl FqdnMatch {
    /// Whether a DNS name (any case, with or without the trailing dot) matches: `matchName`
    /// exactly; `matchPattern` with `*` standing for any characters within one label, `*`
    /// alone for every name, and a leading `**.` for any number of labels (Cilium 1.19).
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self {
            FqdnMatch::Name(want) => want.trim_end_matches('.') == name,
            FqdnMatch::Pattern(pattern) => {
                let pattern = pattern.trim_end_matches('.');
                if pattern == "*" {
                    return true;
                }
                match pattern.strip_prefix("**.") {
                    Some(rest) => name.match_indices('.').any(|(dot, _)| labels_match(rest, &name[dot + 1..])),
                    None => labels_match(pattern, &name),
                }
            }
        }
    }
}

/// `pattern` against `name` label by label, `*` matching any run of characters of one label.
fn labels_match(pattern: &str, name: &str) -> bool {
    let (patterns, labels): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), name.split('.').collect());
    patterns.len() == labels.len()
        && patterns.iter().zip(&labels).all(|(p, l)| label_matches(p.as_bytes(), l.as_bytes()))
}

/// Glob matching within a label: `*` matches any run (possibly empty) of characters.
fn label_matches(pattern: &[u8], label: &[u8]) -> bool {
    match pattern.split_first() {
        None => label.is_empty(),
        Some((b'*', rest)) => (0..=label.len()).any(|skip| label_matches(rest, &label[skip..])),
        Some((&c, rest)) => label.first() == Some(&c) && label_matches(rest, &label[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> FqdnMatch {
        FqdnMatch::Pattern(p.into())
    }

    #[test]
    fn match_name_is_exact_in_any_case_with_or_without_the_root_dot() {
        let name = FqdnMatch::Name("api.example.com".into());
        assert!(name.matches("api.example.com"));
        assert!(name.matches("API.Example.com."));
        assert!(!name.matches("www.api.example.com"));
        assert!(!name.matches("example.com"));
    }

    #[test]
    fn a_star_matches_within_one_label_and_alone_matches_everything() {
        assert!(pattern("*.example.com").matches("api.example.com"));
        assert!(!pattern("*.example.com").matches("a.b.example.com"));
        assert!(!pattern("*.example.com").matches("example.com"));
        assert!(pattern("api-*.example.com").matches("api-eu1.example.com"));
        assert!(pattern("api-*.example.com").matches("api-.example.com"));
        assert!(!pattern("api-*.example.com").matches("web-eu1.example.com"));
        assert!(pattern("*").matches("anything.at.all"));
        assert!(pattern("*").matches("localhost"));
    }

    #[test]
    fn a_leading_double_star_matches_any_depth_of_subdomains_but_not_the_domain() {
        let any = pattern("**.example.com");
        assert!(any.matches("a.example.com"));
        assert!(any.matches("a.b.c.example.com"));
        assert!(!any.matches("example.com"));
        assert!(!any.matches("a.example.org"));
    }
}
