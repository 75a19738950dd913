//! Kafka rules as Cilium applies them (`pkg/policy/api/kafka.go`, the Kafka parser of its
//! proxy): a rule allows a request whose API key its `role` or `apiKey` names (every key when
//! neither is set), whose version and client id equal its `apiVersion` and `clientID` when set,
//! and a topic it names (every topic without one). A request naming several topics is allowed
//! only when each of them is; a request naming none needs only the rest to match. Requests of
//! API keys the rules cannot name are denied.
use std::collections::BTreeSet;

use crate::model::{KafkaMatch, L7Rules};

/// Cilium's Kafka API key names (`KafkaAPIKeyMap`), each at its key's number.
const API_KEYS: [&str; 21] = [
    "produce",
    "fetch",
    "offsets",
    "metadata",
    "leaderandisr",
    "stopreplica",
    "updatemetadata",
    "controlledshutdown",
    "offsetcommit",
    "offsetfetch",
    "findcoordinator",
    "joingroup",
    "heartbeat",
    "leavegroup",
    "syncgroup",
    "describegroups",
    "listgroups",
    "saslhandshake",
    "apiversions",
    "createtopics",
    "deletetopics",
];

pub const PRODUCE: i16 = 0;
pub const FETCH: i16 = 1;
const METADATA: i16 = 3;
const API_VERSIONS: i16 = 18;

/// The API keys a `role` stands for (`MapRoleToAPIKey`), in any case.
pub fn role_api_keys(role: &str) -> Option<&'static [i16]> {
    match role.to_ascii_lowercase().as_str() {
        "produce" => Some(&[PRODUCE, METADATA, API_VERSIONS]),
        // fetch, offsets, metadata, offsetcommit, offsetfetch, findcoordinator, joingroup,
        // heartbeat, leavegroup, syncgroup, apiversions.
        "consume" => Some(&[FETCH, 2, METADATA, 8, 9, 10, 11, 12, 13, 14, API_VERSIONS]),
        _ => None,
    }
}

/// The number of an API key name, in any case.
pub fn api_key(name: &str) -> Option<i16> {
    let name = name.to_ascii_lowercase();
    API_KEYS.iter().position(|k| *k == name).and_then(|i| i16::try_from(i).ok())
}

/// The name of an API key the rules can name.
pub fn api_key_name(key: i16) -> Option<&'static str> {
    usize::try_from(key).ok().and_then(|i| API_KEYS.get(i)).copied()
}

/// An API key as reports show it: its name, or `api-key-N` for one the rules cannot name.
pub fn api_key_text(key: i16) -> String {
    api_key_name(key).map_or_else(|| format!("api-key-{key}"), str::to_string)
}

/// A Kafka request as the rules see it: its header, and the topics its body names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaRequest {
    pub api_key: i16,
    pub api_version: i16,
    /// The header's client id; `None` when null.
    pub client_id: Option<String>,
    /// The topics it names, sorted, once each. A topic a request names only by its id is
    /// [`topic_id`], which no rule's topic matches.
    pub topics: Vec<String>,
}

/// How a topic named only by its id (Fetch from version 13, ...) is shown: no topic name can
/// contain `:`, so no rule's topic allows it.
pub fn topic_id(id: impl std::fmt::Display) -> String {
    format!("topic-id:{id}")
}

impl KafkaRequest {
    /// `API_KEY[:TOPIC[,TOPIC...]]`, as `trace --kafka` and examples write a request: an API key
    /// name, or `consume` for a fetch.
    pub fn parse(text: &str, api_version: i16, client_id: Option<String>) -> Result<KafkaRequest, String> {
        let (key, topics) = text.split_once(':').unwrap_or((text, ""));
        let api_key =
            if key.eq_ignore_ascii_case("consume") { Some(FETCH) } else { api_key(key) }.ok_or_else(|| {
                format!("{text:?}: {key:?} is not a Kafka API key (produce, consume, fetch, metadata, ...)")
            })?;
        let topics: BTreeSet<String> = topics.split(',').filter(|t| !t.is_empty()).map(str::to_string).collect();
        Ok(KafkaRequest { api_key, api_version, client_id, topics: topics.into_iter().collect() })
    }

    /// `produce orders`, `fetch a,b`, `heartbeat`: the API key's name (or number) and topics.
    pub fn describe(&self) -> String {
        let key = api_key_text(self.api_key);
        if self.topics.is_empty() { key } else { format!("{key} {}", self.topics.join(",")) }
    }

    /// Whether `rule` matches everything but the topic.
    fn matches(&self, rule: &KafkaMatch) -> bool {
        (rule.api_keys.is_empty() || rule.api_keys.contains(&self.api_key))
            && rule.api_version.is_none_or(|v| v == self.api_version)
            && rule.client_id.as_ref().is_none_or(|id| Some(id) == self.client_id.as_ref())
    }

    /// The cookie of the rule that allows this request among `rules` (each with its cookie), or
    /// why none does.
    pub(crate) fn judge(&self, rules: &[(&L7Rules, u32)]) -> Result<u32, String> {
        if api_key_name(self.api_key).is_none() {
            return Err(format!("Kafka API key {} is not one Kafka rules can name", self.api_key));
        }
        let mut uncovered: BTreeSet<&str> = self.topics.iter().map(String::as_str).collect();
        for (l7, cookie) in rules {
            let L7Rules::Kafka(kafka) = l7 else { continue };
            for rule in kafka.iter().filter(|rule| self.matches(rule)) {
                match &rule.topic {
                    Some(topic) if !self.topics.is_empty() => {
                        uncovered.remove(topic.as_str());
                        if uncovered.is_empty() {
                            return Ok(*cookie);
                        }
                    }
                    _ => return Ok(*cookie),
                }
            }
        }
        Err(format!("Kafka {} matches no Kafka rule for this peer", self.describe()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(keys: &[i16], topic: Option<&str>) -> KafkaMatch {
        KafkaMatch { api_keys: keys.to_vec(), topic: topic.map(str::to_string), ..KafkaMatch::default() }
    }

    fn request(key: i16, topics: &[&str]) -> KafkaRequest {
        let topics = topics.iter().map(|t| t.to_string()).collect();
        KafkaRequest { api_key: key, api_version: 7, client_id: Some("app".into()), topics }
    }

    fn judge(rules: &[KafkaMatch], request: &KafkaRequest) -> Result<u32, String> {
        let l7 = L7Rules::Kafka(rules.to_vec());
        request.judge(&[(&l7, 42)])
    }

    #[test]
    fn roles_expand_to_cilium_api_keys() {
        let produce = role_api_keys("Produce").unwrap();
        assert_eq!(
            produce.iter().map(|k| api_key_name(*k).unwrap()).collect::<Vec<_>>(),
            ["produce", "metadata", "apiversions"]
        );
        let consume = role_api_keys("consume").unwrap();
        assert_eq!(consume.len(), 11);
        for name in ["fetch", "offsets", "offsetcommit", "offsetfetch", "findcoordinator", "joingroup", "heartbeat"] {
            assert!(consume.contains(&api_key(name).unwrap()), "{name}");
        }
        assert!(!consume.contains(&PRODUCE));
        assert_eq!(role_api_keys("admin"), None);
        assert_eq!((api_key("ApiVersions"), api_key("deleterecords"), api_key_name(21)), (Some(18), None, None));
    }

    #[test]
    fn every_topic_of_a_request_must_be_allowed() {
        let produce = role_api_keys("produce").unwrap();
        let rules = [rule(produce, Some("orders")), rule(produce, Some("audit"))];
        assert_eq!(judge(&rules, &request(PRODUCE, &["orders"])), Ok(42));
        assert_eq!(judge(&rules, &request(PRODUCE, &["audit", "orders"])), Ok(42));
        assert_eq!(
            judge(&rules, &request(PRODUCE, &["orders", "secret"])),
            Err("Kafka produce orders,secret matches no Kafka rule for this peer".into())
        );
        assert!(judge(&rules, &request(FETCH, &["orders"])).is_err(), "produce does not fetch");
        // Without topics (a metadata request for all of them), the key decides.
        assert_eq!(judge(&rules, &request(METADATA, &[])), Ok(42));
        // A topic named by id matches no named topic, only a rule without topic.
        assert!(judge(&rules, &request(PRODUCE, &[topic_id("0b1f").as_str()])).is_err());
        assert!(judge(&[rule(produce, None)], &request(PRODUCE, &[topic_id("0b1f").as_str()])).is_ok());
    }

    #[test]
    fn version_and_client_id_must_equal_and_uncovered_keys_are_denied() {
        let mut exact = rule(&[PRODUCE], None);
        exact.api_version = Some(7);
        exact.client_id = Some("app".into());
        assert!(judge(std::slice::from_ref(&exact), &request(PRODUCE, &["t"])).is_ok());
        let mut other = request(PRODUCE, &["t"]);
        other.api_version = 8;
        assert!(judge(std::slice::from_ref(&exact), &other).is_err());
        other.api_version = 7;
        other.client_id = None;
        assert!(judge(std::slice::from_ref(&exact), &other).is_err());
        // A rule without key allows every key the rules can name, and no other.
        assert!(judge(&[rule(&[], None)], &request(12, &[])).is_ok());
        assert_eq!(
            judge(&[rule(&[], None)], &request(22, &[])),
            Err("Kafka API key 22 is not one Kafka rules can name".into())
        );
    }

    #[test]
    fn requests_parse_from_text() {
        let r = KafkaRequest::parse("consume:b,a,b", 4, None).unwrap();
        assert_eq!(
            (r.api_key, r.topics.as_slice(), r.describe()),
            (FETCH, ["a".to_string(), "b".into()].as_slice(), "fetch a,b".into())
        );
        assert_eq!(KafkaRequest::parse("Heartbeat", 0, None).unwrap().describe(), "heartbeat");
        assert!(KafkaRequest::parse("publish:orders", 0, None).is_err());
    }
}
