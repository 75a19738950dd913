//! The rule translation every kind shares for ports: L4 ports and ranges, ICMP types, L7 rules.

use regex::{Regex, RegexBuilder};

use super::*;
use crate::api;
use crate::l7::kafka;

impl Translator<'_, '_> {
    pub(super) fn l4(
        &mut self,
        to_ports: Option<&[api::PortRule]>,
        icmps: Option<&[api::IcmpRule]>,
        path: &str,
        deny: bool,
        direction: Direction,
    ) -> Vec<PortRule> {
        let mut rules = Vec::new();
        if to_ports.is_some() && icmps.is_some() {
            self.error(
                &format!("{path}.icmps"),
                "icmps cannot be combined with toPorts in one rule; write a separate rule",
            );
        }
        for (i, port_rule) in to_ports.iter().copied().flatten().enumerate() {
            let at = format!("{path}.toPorts[{i}]");
            for (field, value, feature) in [
                ("listener", &port_rule.listener, "Envoy listener redirects"),
                ("originatingTLS", &port_rule.originating_tls, "TLS origination"),
                ("terminatingTLS", &port_rule.terminating_tls, "TLS termination"),
            ] {
                if value.is_some() {
                    self.unsupported(&format!("{at}.{field}"), feature);
                }
            }
            let mut l7 = port_rule.rules.as_ref().and_then(|raw| self.l7(raw, &format!("{at}.rules"), deny, direction));
            if let Some(names) = port_rule.server_names.as_deref().filter(|names| !names.is_empty()) {
                l7 = self.server_names(names, port_rule.rules.is_some(), &format!("{at}.serverNames"), deny);
            }
            let l7_at = l7.as_ref().map(|l7| {
                let field = match l7 {
                    L7Rules::Tls(_) => format!("{at}.serverNames"),
                    _ => format!("{at}.rules.{}", l7.kind()),
                };
                let line = self.r.line_of(&self.path(&field));
                (field, line)
            });
            if port_rule.ports.is_empty() {
                // `toPorts: [{rules: ...}]` without ports applies to every port (ANY protocol).
                for protocol in [Protocol::TCP, Protocol::UDP, Protocol::SCTP] {
                    rules.push(PortRule { protocol, port: PortSpec::Any, l7: l7.clone(), l7_at: l7_at.clone() });
                }
            }
            for (j, port) in port_rule.ports.iter().enumerate() {
                let at = format!("{at}.ports[{j}]");
                let Some((protocols, spec)) = self.port(port, &at) else { continue };
                if let (Some(L7Rules::Dns(_)), PortSpec::Range(lo, hi)) = (&l7, &spec)
                    && lo != hi
                {
                    self.error(&format!("{at}.endPort"), "DNS rules do not support port ranges");
                }
                for protocol in protocols {
                    rules.push(PortRule { protocol, port: spec.clone(), l7: l7.clone(), l7_at: l7_at.clone() });
                }
            }
        }
        for (i, icmp) in icmps.iter().copied().flatten().enumerate() {
            for (j, field) in icmp.fields.iter().enumerate() {
                let at = format!("{path}.icmps[{i}].fields[{j}]");
                let protocol = match field.family.as_deref() {
                    None | Some("IPv4") => Protocol::ICMP,
                    Some("IPv6") => Protocol::ICMPv6,
                    Some(other) => {
                        self.error(&format!("{at}.family"), format!("{other:?} is not IPv4 or IPv6"));
                        continue;
                    }
                };
                match icmp_type(&field.icmp_type, protocol) {
                    Some(t) => rules.push(PortRule {
                        protocol,
                        port: PortSpec::Range(t as u16, t as u16),
                        l7: None,
                        l7_at: None,
                    }),
                    None => {
                        let family = if protocol == Protocol::ICMP { "ICMP (IPv4)" } else { "ICMPv6" };
                        self.error(
                            &format!("{at}.type"),
                            format!(
                                "{:?} is not an {family} type number (0-255) or name",
                                display_int_or_string(&field.icmp_type)
                            ),
                        )
                    }
                }
            }
        }
        rules
    }

    pub(super) fn port(&mut self, raw: &api::PortProtocol, path: &str) -> Option<(Vec<Protocol>, PortSpec)> {
        let protocols = match raw.protocol.as_deref() {
            None | Some("ANY") => vec![Protocol::TCP, Protocol::UDP, Protocol::SCTP],
            Some("TCP") => vec![Protocol::TCP],
            Some("UDP") => vec![Protocol::UDP],
            Some("SCTP") => vec![Protocol::SCTP],
            Some("VRRP") => vec![Protocol::VRRP],
            Some("IGMP") => vec![Protocol::IGMP],
            Some(other) => {
                self.error(&format!("{path}.protocol"), format!("{other:?} is not TCP, UDP, SCTP, ANY, VRRP or IGMP"));
                return None;
            }
        };
        let spec = self.port_spec(raw.port.as_ref(), raw.end_port, path)?;
        if matches!(protocols[0], Protocol::VRRP | Protocol::IGMP) && spec != PortSpec::Any {
            self.error(&format!("{path}.port"), "VRRP and IGMP have no ports");
            return None;
        }
        Some((protocols, spec))
    }

    /// Shared by CNP `toPorts` and NetworkPolicy `ports`.
    pub(super) fn port_spec(
        &mut self,
        port: Option<&api::IntOrString>,
        end_port: Option<i64>,
        path: &str,
    ) -> Option<PortSpec> {
        let number = |n: i64| u16::try_from(n).ok();
        let spec = match port {
            None => PortSpec::Any,
            Some(api::IntOrString::Int(n)) => match number(*n) {
                Some(0) => PortSpec::Any,
                Some(p) => PortSpec::Range(p, p),
                None => {
                    self.error(&format!("{path}.port"), format!("{n} is not a port (0-65535)"));
                    return None;
                }
            },
            Some(api::IntOrString::String(s)) => match s.parse::<i64>() {
                Ok(n) => return self.port_spec(Some(&api::IntOrString::Int(n)), end_port, path),
                Err(_) if is_port_name(s) => PortSpec::Named(s.clone()),
                Err(_) => {
                    self.error(&format!("{path}.port"), format!("{s:?} is not a port or a port name"));
                    return None;
                }
            },
        };
        match (end_port, &spec) {
            (None, _) => Some(spec),
            (Some(end), PortSpec::Range(start, _)) => match number(end) {
                Some(end) if end >= *start => Some(PortSpec::Range(*start, end)),
                _ => {
                    self.error(&format!("{path}.endPort"), format!("{end} is not a port at or above port {start}"));
                    None
                }
            },
            (Some(_), PortSpec::Named(_)) => {
                self.warning(&format!("{path}.endPort"), "endPort is ignored with a named port");
                Some(spec)
            }
            (Some(_), PortSpec::Any) => {
                self.error(&format!("{path}.endPort"), "endPort needs a port");
                None
            }
        }
    }

    pub(super) fn l7(&mut self, raw: &api::L7Rules, path: &str, deny: bool, direction: Direction) -> Option<L7Rules> {
        if deny {
            self.error(path, "L7 rules are not allowed in deny rules");
            return None;
        }
        if raw.l7proto.is_some() || raw.l7.is_some() {
            self.unsupported(path, "generic L7 parsers (l7proto)");
            return None;
        }
        let kinds = [raw.http.is_some(), raw.kafka.is_some(), raw.dns.is_some()].iter().filter(|k| **k).count();
        if kinds != 1 {
            self.error(path, "exactly one of http, kafka or dns is required");
            return None;
        }
        if let Some(http) = &raw.http {
            let mut rules = Vec::new();
            for (i, rule) in http.iter().enumerate() {
                let at = format!("{path}.http[{i}]");
                let header_matches = rule
                    .header_matches
                    .iter()
                    .enumerate()
                    .filter_map(|(j, header)| self.header_match(header, &format!("{at}.headerMatches[{j}]")))
                    .collect();
                let headers = rule
                    .headers
                    .iter()
                    .map(|h| match h.split_once(':') {
                        Some((name, value)) => (name.trim().to_ascii_lowercase(), Some(value.trim().to_string())),
                        None => (h.trim().to_ascii_lowercase(), None),
                    })
                    .collect();
                rules.push(HttpMatch {
                    method: self.regex(rule.method.as_deref(), &format!("{at}.method")),
                    path: self.regex(rule.path.as_deref(), &format!("{at}.path")),
                    host: self.regex(rule.host.as_deref(), &format!("{at}.host")),
                    headers,
                    header_matches,
                });
            }
            return Some(L7Rules::Http(rules));
        }
        if let Some(kafka) = &raw.kafka {
            let rules =
                kafka.iter().enumerate().map(|(i, rule)| self.kafka(rule, &format!("{path}.kafka[{i}]"))).collect();
            return Some(L7Rules::Kafka(rules));
        }
        if direction == Direction::Ingress {
            self.error(&format!("{path}.dns"), "DNS rules apply to egress only");
            return None;
        }
        let mut matches = Vec::new();
        for (i, fqdn) in raw.dns.iter().flatten().enumerate() {
            matches.extend(self.fqdn(fqdn, &format!("{path}.dns[{i}]")));
        }
        Some(L7Rules::Dns(matches))
    }

    /// A Kafka rule as Cilium's `PortRuleKafka.Sanitize` reads it: `role` or `apiKey` (names in
    /// any case), a 16-bit `apiVersion`, a topic of at most 255 of `[a-zA-Z0-9._-]`; empty
    /// fields are absent.
    fn kafka(&mut self, rule: &api::KafkaRule, at: &str) -> KafkaMatch {
        let set = |field: &Option<String>| field.clone().filter(|v| !v.is_empty());
        let (role, api_key, api_version, topic) =
            (set(&rule.role), set(&rule.api_key), set(&rule.api_version), set(&rule.topic));
        if role.is_some() && api_key.is_some() {
            self.error(at, "role and apiKey are mutually exclusive");
        }
        let mut api_keys = Vec::new();
        if let Some(role) = role {
            match kafka::role_api_keys(&role) {
                Some(keys) => api_keys = keys.to_vec(),
                None => self.error(&format!("{at}.role"), format!("{role:?} is not produce or consume")),
            }
        }
        if let Some(key) = api_key {
            match kafka::api_key(&key) {
                Some(key) => api_keys = vec![key],
                None => self.error(&format!("{at}.apiKey"), format!("{key:?} is not a Kafka API key")),
            }
        }
        let api_version = api_version.and_then(|v| match v.parse::<i16>() {
            Ok(version) => Some(version),
            Err(_) => {
                self.error(&format!("{at}.apiVersion"), format!("{v:?} is not a Kafka API version (a 16-bit integer)"));
                None
            }
        });
        if let Some(topic) = &topic
            && (topic.len() > 255
                || !topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
        {
            self.error(
                &format!("{at}.topic"),
                format!("{topic:?} is not a Kafka topic (at most 255 letters, digits, '.', '_' and '-')"),
            );
        }
        KafkaMatch { api_keys, api_version, client_id: set(&rule.client_id), topic }
    }

    /// `serverNames` (Cilium's `PortRule.ServerNames`, matched as Envoy matches a filter chain's
    /// `server_names`): exact names, or `*.` and a domain for any name one or more labels below
    /// it. Without TLS interception (`terminatingTLS`, not implemented) Cilium cannot apply
    /// `rules` to the same connections: a port rule with both is rejected rather than left to
    /// deny every connection.
    fn server_names(&mut self, raw: &[String], with_rules: bool, path: &str, deny: bool) -> Option<L7Rules> {
        if deny {
            self.error(path, "serverNames is not allowed in deny rules");
            return None;
        }
        if with_rules {
            self.error(
                path,
                "serverNames cannot be combined with rules (http, kafka or dns): Cilium applies L7 rules to \
                 TLS connections only when its proxy terminates TLS (terminatingTLS), which Palisade does not \
                 do; write the server names and the L7 rules in separate toPorts entries",
            );
            return None;
        }
        let mut names = Vec::new();
        for (i, name) in raw.iter().enumerate() {
            match server_name(name) {
                Ok(name) => names.push(name),
                Err(why) => self.error(&format!("{path}[{i}]"), format!("{name:?} {why}")),
            }
        }
        (names.len() == raw.len()).then_some(L7Rules::Tls(names))
    }

    fn header_match(&mut self, raw: &api::HeaderMatch, path: &str) -> Option<HeaderMatch> {
        if raw.secret.is_some() {
            self.unsupported(&format!("{path}.secret"), "header values from Secrets");
            return None;
        }
        if raw.name.trim().is_empty() {
            self.error(&format!("{path}.name"), "a header name is required");
            return None;
        }
        let mismatch = match raw.mismatch.as_deref() {
            None => None,
            Some("LOG") => Some(Mismatch::Log),
            Some("ADD") => Some(Mismatch::Add),
            Some("DELETE") => Some(Mismatch::Delete),
            Some("REPLACE") => Some(Mismatch::Replace),
            Some(other) => {
                self.error(&format!("{path}.mismatch"), format!("{other:?} is not LOG, ADD, DELETE or REPLACE"));
                return None;
            }
        };
        Some(HeaderMatch { name: raw.name.trim().to_ascii_lowercase(), value: raw.value.clone(), mismatch })
    }

    /// A full-match regex with a bounded program size; `None` when absent or invalid.
    pub(super) fn regex(&mut self, pattern: Option<&str>, path: &str) -> Option<Regex> {
        let pattern = pattern?;
        match RegexBuilder::new(&format!("^(?:{pattern})$")).size_limit(REGEX_SIZE_LIMIT).build() {
            Ok(regex) => Some(regex),
            Err(e) => {
                self.error(
                    path,
                    format!("{pattern:?} is not a valid regular expression: {}", first_line(&e.to_string())),
                );
                None
            }
        }
    }
}

/// A `serverNames` entry, lower case without the root dot: a DNS name, or `*.` and one.
fn server_name(raw: &str) -> Result<String, &'static str> {
    let name = raw.trim_end_matches('.').to_ascii_lowercase();
    let domain = name.strip_prefix("*.").unwrap_or(&name);
    if domain.contains('*') {
        return Err(
            "is not a server name: a wildcard is only allowed as the whole leftmost label, as in *.example.com",
        );
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(label_ok) {
        return Err("is not a server name (a DNS name such as api.example.com, or *.example.com)");
    }
    Ok(name)
}

/// An ICMP type by number (0-255) or by the name Cilium gives it in `family`
/// (`cilium:pkg/policy/api/icmp.go`); names are per family, as the numbers differ.
pub(super) fn icmp_type(raw: &api::IntOrString, protocol: Protocol) -> Option<u8> {
    const V4: [(&str, u8); 14] = [
        ("EchoReply", 0),
        ("DestinationUnreachable", 3),
        ("Redirect", 5),
        ("Echo", 8),
        ("EchoRequest", 8),
        ("RouterAdvertisement", 9),
        ("RouterSelection", 10),
        ("TimeExceeded", 11),
        ("ParameterProblem", 12),
        ("Timestamp", 13),
        ("TimestampReply", 14),
        ("Photuris", 40),
        ("ExtendedEchoRequest", 42),
        ("ExtendedEchoReply", 43),
    ];
    const V6: [(&str, u8); 27] = [
        ("DestinationUnreachable", 1),
        ("PacketTooBig", 2),
        ("TimeExceeded", 3),
        ("ParameterProblem", 4),
        ("EchoRequest", 128),
        ("EchoReply", 129),
        ("MulticastListenerQuery", 130),
        ("MulticastListenerReport", 131),
        ("MulticastListenerDone", 132),
        ("RouterSolicitation", 133),
        ("RouterAdvertisement", 134),
        ("NeighborSolicitation", 135),
        ("NeighborAdvertisement", 136),
        ("RedirectMessage", 137),
        ("RouterRenumbering", 138),
        ("ICMPNodeInformationQuery", 139),
        ("ICMPNodeInformationResponse", 140),
        ("InverseNeighborDiscoverySolicitation", 141),
        ("InverseNeighborDiscoveryAdvertisement", 142),
        ("HomeAgentAddressDiscoveryRequest", 144),
        ("HomeAgentAddressDiscoveryReply", 145),
        ("MobilePrefixSolicitation", 146),
        ("MobilePrefixAdvertisement", 147),
        ("DuplicateAddressRequestCodeSuffix", 157),
        ("DuplicateAddressConfirmationCodeSuffix", 158),
        ("ExtendedEchoRequest", 160),
        ("ExtendedEchoReply", 161),
    ];
    match raw {
        api::IntOrString::Int(n) => u8::try_from(*n).ok(),
        api::IntOrString::String(s) => s.parse::<u8>().ok().or_else(|| {
            let table: &[(&str, u8)] = if protocol == Protocol::ICMP { &V4 } else { &V6 };
            table.iter().find(|(name, _)| name == s).map(|(_, t)| *t)
        }),
    }
}

pub(super) fn display_int_or_string(v: &api::IntOrString) -> String {
    match v {
        api::IntOrString::Int(n) => n.to_string(),
        api::IntOrString::String(s) => s.clone(),
    }
}

/// IANA service names, as Kubernetes validates container port names, and starting with a
/// letter: Kubernetes would take `"80a"` as a name that matches no container port (a silent
/// deny), but it is a mistyped number far more often than a real port name.
pub(super) fn is_port_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.len() <= 15
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}
