//! What the L7 rules decide for one request or one DNS query: one implementation for `trace`
//! and the node's proxy. HTTP follows Cilium's `rules.http` as Envoy applies it (method, path
//! and host are full-match regular expressions, `headers` and `headerMatches` compare
//! case-insensitive names and exact values); DNS follows `matchName` and `matchPattern`; TLS
//! follows `serverNames` as Envoy matches the SNI of a ClientHello; Kafka follows [`kafka`].
//!
//! The proxy speaks HTTP, TLS (the ClientHello) and Kafka on TCP and DNS on UDP and TCP: HTTP,
//! TLS or Kafka rules on UDP or SCTP stay fail-closed (denied, `l7-unsupported`).
pub mod kafka;

use palisade_common::{self as dp, Direction};

use crate::cluster::ContainerPort;
use crate::compile::{CompiledPolicy, MapState};
use crate::model::{FqdnMatch, HeaderMatch, HttpMatch, L7Rules, Mismatch, PortSpec, Protocol};
use crate::trace::{DROP_L7_UNSUPPORTED, FlowPort};
pub use kafka::KafkaRequest;

/// A request the L7 rules judge: an HTTP request, or a DNS query for a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L7Request {
    Http(HttpRequest),
    Dns(String),
    /// A TCP connection judged by its TLS ClientHello: the server name it indicates (SNI),
    /// `None` when it indicates none or the connection does not start with a ClientHello.
    Tls(Option<String>),
    Kafka(KafkaRequest),
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

/// How one endpoint's L7 rules in one direction judge one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVerdict {
    pub allowed: bool,
    /// Why: the policy and rule that allowed it ("<policy id> <rule path>", as trace prints), or
    /// why it is denied.
    pub reason: String,
    /// The cookie of the rule that allowed it, `COOKIE_NONE` (palisade_common) when denied.
    pub cookie: u32,
    /// Header changes to make on the way upstream (headerMatches mismatch actions) when allowed.
    pub rewrite: HttpRewrite,
}

impl RequestVerdict {
    fn denied(reason: String) -> RequestVerdict {
        RequestVerdict { allowed: false, reason, cookie: dp::COOKIE_NONE, rewrite: HttpRewrite::default() }
    }
}

/// The L7 rules that apply to a redirected flow: those of the allow rules selecting the peer on
/// the flow's port.
#[derive(Debug)]
pub(crate) enum Selected<'a> {
    /// An allow rule without L7 rules for this peer and port (its cookie): every request passes,
    /// whatever other rules say (an L4-only rule shadows L7 rules, as in Cilium).
    Unfiltered(u32),
    /// The L7 rules, each with the cookie of its rule.
    Rules(Vec<(&'a L7Rules, u32)>),
}

impl Selected<'_> {
    /// The kinds of the L7 rules ("dns", "http", "kafka"), sorted, once each.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds: Vec<&'static str> = match self {
            Selected::Unfiltered(_) => Vec::new(),
            Selected::Rules(rules) => rules.iter().map(|(l7, _)| l7.kind()).collect(),
        };
        kinds.sort_unstable();
        kinds.dedup();
        kinds
    }
}

/// Selects the L7 rules of a flow whose entry in `policy` redirects: `own_ports` are the
/// endpoint's container ports, which ingress named ports resolve against.
pub(crate) fn select<'a>(
    compiled: &'a CompiledPolicy,
    policy: &MapState,
    own_ports: &[ContainerPort],
    remote: u32,
    direction: Direction,
    port: FlowPort,
) -> Selected<'a> {
    let mut l7_rules = Vec::new();
    for cookie in compiled.cookies_selecting(policy, remote) {
        let Some((_, rule)) = compiled.policies().rule_for_cookie(cookie) else { continue };
        if rule.ports.is_empty() {
            return Selected::Unfiltered(cookie);
        }
        for port_rule in rule.ports.iter().filter(|p| p.protocol == port.protocol) {
            let covers = match &port_rule.port {
                PortSpec::Any => true,
                PortSpec::Range(lo, hi) => (*lo..=*hi).contains(&port.port),
                PortSpec::Named(name) => {
                    compiled.resolve_named_port(name, port_rule.protocol, direction, own_ports).contains(&port.port)
                }
            };
            if !covers {
                continue;
            }
            match &port_rule.l7 {
                None => return Selected::Unfiltered(cookie),
                Some(l7) => l7_rules.push((l7, cookie)),
            }
        }
    }
    Selected::Rules(l7_rules)
}

/// Why no proxy judges a redirected flow on `protocol` with L7 rules of `kinds` (see
/// [`CompiledPolicy::l7_kinds`]) and `request`, when one is given, so that it is denied
/// (`l7-unsupported`); `None` when the proxy judges it. The proxy refuses a connection up front
/// when this says why.
pub fn unproxied(protocol: Protocol, kinds: &[&str], request: Option<&L7Request>) -> Option<&'static str> {
    let dns = kinds.contains(&"dns") || matches!(request, Some(L7Request::Dns(_)));
    let tls = kinds.contains(&"tls") || matches!(request, Some(L7Request::Tls(_)));
    if tls && protocol != Protocol::TCP {
        return Some("the TLS proxy takes TCP only");
    }
    let kafka = kinds.contains(&"kafka") || matches!(request, Some(L7Request::Kafka(_)));
    if kinds.contains(&"kafka") && kinds.len() > 1 {
        Some("Kafka rules and other L7 rules on one port (the proxy speaks one protocol per connection)")
    } else if kafka && protocol != Protocol::TCP {
        Some("the Kafka proxy takes TCP only")
    } else if dns && protocol != Protocol::TCP && protocol != Protocol::UDP {
        Some("the DNS proxy takes UDP and TCP only")
    } else if !dns && protocol != Protocol::TCP {
        Some("the HTTP proxy takes TCP only")
    } else {
        None
    }
}

/// What the selected rules mean for `request`, proxied or not: allowed when a rule matches it.
pub(crate) fn judge(compiled: &CompiledPolicy, selected: &Selected, request: &L7Request) -> RequestVerdict {
    let origin = |cookie| compiled.policies().describe_cookie(cookie);
    let allowed = |cookie, rewrite| RequestVerdict { allowed: true, reason: origin(cookie), cookie, rewrite };
    let rules = match selected {
        Selected::Unfiltered(cookie) => return allowed(*cookie, HttpRewrite::default()),
        Selected::Rules(rules) => rules,
    };
    match request {
        L7Request::Http(request) => {
            for (l7, cookie) in rules {
                if let L7Rules::Http(http) = l7
                    && let Some(rewrite) = http.iter().find_map(|r| request.judge(r))
                {
                    return allowed(*cookie, rewrite);
                }
            }
            RequestVerdict::denied(format!(
                "{} {} matches no HTTP rule for this peer (HTTP 403)",
                request.method, request.path
            ))
        }
        L7Request::Dns(name) => {
            for (l7, cookie) in rules {
                if let L7Rules::Dns(matches) = l7
                    && matches.iter().any(|m| m.matches(name))
                {
                    return allowed(*cookie, HttpRewrite::default());
                }
            }
            RequestVerdict::denied(format!("query {name} matches no DNS rule for this peer (REFUSED)"))
        }
        L7Request::Tls(server_name) => {
            if let Some(name) = server_name {
                for (l7, cookie) in rules {
                    if let L7Rules::Tls(names) = l7
                        && names.iter().any(|pattern| server_name_matches(pattern, name))
                    {
                        return allowed(*cookie, HttpRewrite::default());
                    }
                }
            }
            let what = server_name
                .as_deref()
                .map_or("a connection without TLS server name".into(), |n| format!("server name {n}"));
            RequestVerdict::denied(format!("{what} matches no serverNames rule for this peer (connection reset)"))
        }
        L7Request::Kafka(request) => match request.judge(rules) {
            Ok(cookie) => allowed(cookie, HttpRewrite::default()),
            Err(why) => RequestVerdict::denied(why),
        },
    }
}

/// What the node's L7 proxy asks of a compilation.
impl CompiledPolicy {
    /// What the L7 rules of local endpoint `namespace/name` decide for `request` to (egress) or
    /// from (ingress) a peer with identity `remote` on `port`. `None` when the endpoint is not a
    /// local endpoint of this compilation or when its entry for this flow does not redirect (L4
    /// decides alone: see [`CompiledPolicy::l4_allows`]).
    /// A DNS request or DNS rules on SCTP, and any other request on UDP or SCTP, are denied
    /// with a reason saying why no proxy judges them (`l7-unsupported: ...`).
    pub fn judge_request(
        &self,
        namespace: &str,
        name: &str,
        direction: Direction,
        remote: u32,
        port: FlowPort,
        request: &L7Request,
    ) -> Option<RequestVerdict> {
        let selected = self.redirected(namespace, name, direction, remote, port)?;
        Some(match unproxied(port.protocol, &selected.kinds(), Some(request)) {
            Some(why) => RequestVerdict::denied(format!("{DROP_L7_UNSUPPORTED}: {why}")),
            None => judge(self, &selected, request),
        })
    }

    /// Whether the L4 entry of local endpoint `namespace/name` lets this flow through (a redirect
    /// does, to the proxy); `None` when the endpoint is not a local endpoint of this compilation.
    pub fn l4_allows(
        &self,
        namespace: &str,
        name: &str,
        direction: Direction,
        remote: u32,
        port: FlowPort,
    ) -> Option<bool> {
        let (_, group) = self.group_of(namespace, name)?;
        let entry = group.direction(direction).lookup(remote, port.protocol, port.port);
        Some(entry.is_some_and(|e| e.value.verdict() != dp::Verdict::Deny))
    }

    /// The kinds of the L7 rules the proxy would apply to this flow ("dns", "http", "kafka"),
    /// sorted: the proxy refuses a connection up front when [`unproxied`] says why with them.
    /// Empty when the flow is not redirected, or when a rule without L7 rules allows it (every
    /// request passes).
    pub fn l7_kinds(
        &self,
        namespace: &str,
        name: &str,
        direction: Direction,
        remote: u32,
        port: FlowPort,
    ) -> Vec<&'static str> {
        self.redirected(namespace, name, direction, remote, port).map(|s| s.kinds()).unwrap_or_default()
    }

    /// Whether any policy of this compilation has L7 rules (the agent shares the compilation
    /// with its proxy only then).
    pub fn has_l7_rules(&self) -> bool {
        self.policies()
            .policies
            .iter()
            .flat_map(|p| &p.rules)
            .flat_map(|r| r.ingress.rules.iter().chain(&r.egress.rules))
            .any(|r| r.ports.iter().any(|p| p.l7.is_some()))
    }

    /// The L7 rules of a flow whose entry redirects; `None` when the endpoint is not local or
    /// the entry does not redirect.
    fn redirected(
        &self,
        namespace: &str,
        name: &str,
        direction: Direction,
        remote: u32,
        port: FlowPort,
    ) -> Option<Selected<'_>> {
        let (key, group) = self.group_of(namespace, name)?;
        let policy = group.direction(direction);
        let entry = policy.lookup(remote, port.protocol, port.port)?;
        (entry.value.verdict() == dp::Verdict::Redirect)
            .then(|| select(self, policy, &key.ports, remote, direction, port))
    }
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

/// Whether a TLS server name (any case, with or without the root dot) matches a `serverNames`
/// entry (lower case, without the root dot): exactly, or for `*.domain` when the name is one or
/// more labels below `domain`, as Envoy matches `server_names` (`www.a.example.com` is tried
/// as itself, then `*.a.example.com`, `*.example.com`, `*.com`).
pub fn server_name_matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(domain) => {
            name.strip_suffix(domain).and_then(|below| below.strip_suffix('.')).is_some_and(|below| !below.is_empty())
        }
        None => name == pattern,
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
    fn server_names_match_exactly_or_below_a_wildcard_domain() {
        assert!(server_name_matches("api.example.com", "api.example.com"));
        assert!(server_name_matches("api.example.com", "API.Example.COM."));
        assert!(!server_name_matches("api.example.com", "www.api.example.com"));
        assert!(!server_name_matches("api.example.com", "example.com"));
        assert!(server_name_matches("*.example.com", "api.example.com"));
        assert!(server_name_matches("*.example.com", "a.b.example.com"));
        assert!(!server_name_matches("*.example.com", "example.com"));
        assert!(!server_name_matches("*.example.com", ".example.com"));
        assert!(!server_name_matches("*.example.com", "badexample.com"));
        assert!(!server_name_matches("*.example.com", "api.example.com.evil"));
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
