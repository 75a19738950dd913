//! What `toFQDNs` selects on this node: the addresses of the DNS answers the node's DNS proxy
//! let through, each kept for its record's TTL raised to a minimum (`--fqdn-min-ttl`, as
//! Cilium's `tofqdns-min-ttl`) and forgotten after. Saved to a file after each change and
//! restored when the agent starts again, as Cilium keeps its DNS history: a restart must not
//! close the connections pods opened to the addresses they looked up.
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The addresses one DNS answer gave, under every name it gave them for (the query's name and
/// the CNAMEs on the way): a `toFQDNs` selector matching any of them selects the addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsAnswer {
    /// Lower case, without the root dot.
    pub names: Vec<String>,
    /// Each address with its record's TTL in seconds.
    pub addresses: Vec<(Ipv4Addr, u32)>,
}

/// Learned names and addresses, with when each pair expires and the generation that learned it.
#[derive(Clone, Debug)]
pub struct FqdnCache {
    min_ttl: Duration,
    learned: BTreeMap<String, BTreeMap<Ipv4Addr, Pair>>,
    /// Counts the answers that taught a pair: what [`Self::answers`] holds is everything learned
    /// up to the current generation.
    generation: u64,
}

#[derive(Clone, Copy, Debug)]
struct Pair {
    expires: Instant,
    generation: u64,
}

/// What an answer taught ([`FqdnCache::learn`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Learning {
    /// A name gained an address: what `toFQDNs` selects changed.
    pub changed: bool,
    /// The generation whose answers hold every pair of this answer: until the datapath has that
    /// generation written, a connection to one of its addresses may be dropped, whether this
    /// answer or an earlier one taught the pair.
    pub generation: u64,
}

impl FqdnCache {
    pub fn new(min_ttl: Duration) -> FqdnCache {
        FqdnCache { min_ttl, learned: BTreeMap::new(), generation: 0 }
    }

    /// The generation [`Self::answers`] reflects.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Takes an answer in at `now`. A known pair only has its expiry pushed out.
    pub fn learn(&mut self, answer: &DnsAnswer, now: Instant) -> Learning {
        let mut learning = Learning { changed: false, generation: 0 };
        if answer.addresses.is_empty() {
            return learning;
        }
        let next = self.generation + 1;
        for name in &answer.names {
            // Every answer through the proxy comes here, mostly for names known already: looked
            // up without a copy of the name, and nothing else of the cache is visited.
            if !self.learned.contains_key(name) {
                self.learned.insert(name.clone(), BTreeMap::new());
            }
            let addresses = self.learned.get_mut(name).expect("just inserted");
            for &(address, ttl) in &answer.addresses {
                let expires = now + Duration::from_secs(ttl.into()).max(self.min_ttl);
                match addresses.get_mut(&address) {
                    Some(pair) => {
                        pair.expires = pair.expires.max(expires);
                        learning.generation = learning.generation.max(pair.generation);
                    }
                    None => {
                        addresses.insert(address, Pair { expires, generation: next });
                        learning.changed = true;
                    }
                }
            }
        }
        if learning.changed {
            self.generation = next;
            learning.generation = next;
        }
        learning
    }

    /// Forgets what expired by `now`; whether anything did.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.learned.values().map(BTreeMap::len).sum::<usize>();
        for addresses in self.learned.values_mut() {
            addresses.retain(|_, pair| pair.expires > now);
        }
        self.learned.retain(|_, addresses| !addresses.is_empty());
        before != self.learned.values().map(BTreeMap::len).sum::<usize>()
    }

    /// When the next pair expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.learned.values().flat_map(BTreeMap::values).map(|pair| pair.expires).min()
    }

    /// The cache saved at `path` by an earlier run, less what expired since (empty when there
    /// is no file).
    pub fn restore(min_ttl: Duration, path: &Path, now: Instant) -> io::Result<FqdnCache> {
        let mut cache = FqdnCache::new(min_ttl);
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(cache),
            Err(e) => return Err(e),
        };
        let saved: Saved = serde_json::from_slice(&text).map_err(io::Error::other)?;
        let wall = unix_seconds(SystemTime::now());
        for (name, addresses) in saved.names {
            let kept = addresses.into_iter().filter(|&(_, expires)| expires > wall).map(|(address, expires)| {
                // Generation 0: written with the agent's first convergence, before any answer.
                (address, Pair { expires: now + Duration::from_secs(expires - wall), generation: 0 })
            });
            cache.learned.entry(name).or_default().extend(kept);
        }
        cache.learned.retain(|_, addresses| !addresses.is_empty());
        Ok(cache)
    }

    /// Writes the cache to `path` whole (a new file renamed over the old one), each expiry as
    /// wall-clock time, so that another run can restore it.
    pub fn save(&self, path: &Path, now: Instant) -> io::Result<()> {
        let wall = SystemTime::now();
        let names = self
            .learned
            .iter()
            .map(|(name, addresses)| {
                let addresses = addresses
                    .iter()
                    .map(|(&address, pair)| (address, unix_seconds(wall + (pair.expires - now))))
                    .collect();
                (name.clone(), addresses)
            })
            .collect();
        let text = serde_json::to_vec(&Saved { names }).map_err(io::Error::other)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let partial = path.with_extension("partial");
        std::fs::write(&partial, text)?;
        std::fs::rename(&partial, path)
    }

    /// Every learned name with its addresses, as the policy compiler takes them.
    pub fn answers(&self) -> BTreeMap<String, BTreeSet<Ipv4Addr>> {
        self.learned.iter().map(|(name, addresses)| (name.clone(), addresses.keys().copied().collect())).collect()
    }
}

/// The cache as saved: every name's addresses with when each expires (seconds since 1970).
#[derive(Serialize, Deserialize)]
struct Saved {
    names: BTreeMap<String, BTreeMap<Ipv4Addr, u64>>,
}

/// Rounded up: a restored pair lives at least as long as it would have.
fn unix_seconds(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    since.as_secs() + u64::from(since.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(names: &[&str], addresses: &[(&str, u32)]) -> DnsAnswer {
        DnsAnswer {
            names: names.iter().map(|n| n.to_string()).collect(),
            addresses: addresses.iter().map(|(a, ttl)| (a.parse().unwrap(), *ttl)).collect(),
        }
    }

    fn learned(cache: &FqdnCache) -> Vec<(String, Vec<String>)> {
        let answers = cache.answers();
        answers.into_iter().map(|(n, a)| (n, a.iter().map(ToString::to_string).collect())).collect()
    }

    #[test]
    fn addresses_are_kept_for_their_ttl_raised_to_the_minimum_then_forgotten() {
        let start = Instant::now();
        let mut cache = FqdnCache::new(Duration::from_secs(60));
        let cname = answer(&["www.example.com", "edge.example.net"], &[("10.200.99.10", 5), ("10.200.99.11", 600)]);
        assert_eq!(cache.learn(&cname, start), Learning { changed: true, generation: 1 });
        assert_eq!(
            learned(&cache),
            [
                ("edge.example.net".to_string(), vec!["10.200.99.10".to_string(), "10.200.99.11".to_string()]),
                ("www.example.com".to_string(), vec!["10.200.99.10".to_string(), "10.200.99.11".to_string()]),
            ]
        );
        // The same answer again changes nothing the policy sees.
        assert_eq!(cache.learn(&cname, start + Duration::from_secs(1)), Learning { changed: false, generation: 1 });
        // A 5 s record lives for the 60 s minimum, a 600 s one for 600 s, from its last answer.
        assert_eq!(cache.next_expiry(), Some(start + Duration::from_secs(61)));
        assert!(!cache.expire(start + Duration::from_secs(60)));
        assert!(cache.expire(start + Duration::from_secs(61)));
        assert_eq!(learned(&cache)[0].1, ["10.200.99.11"]);
        assert!(!cache.expire(start + Duration::from_secs(600)));
        assert!(cache.expire(start + Duration::from_secs(601)));
        assert!(cache.answers().is_empty() && cache.next_expiry().is_none());
    }

    #[test]
    fn a_saved_cache_is_restored_without_what_expired_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fqdn.json");
        let now = Instant::now();
        assert!(FqdnCache::restore(Duration::from_secs(60), &path, now).unwrap().answers().is_empty(), "no file");
        let mut cache = FqdnCache::new(Duration::from_secs(2));
        cache.learn(&answer(&["api.example.com"], &[("10.200.99.10", 3600)]), now);
        cache.save(&path, now).unwrap();
        let restored = FqdnCache::restore(Duration::from_secs(2), &path, Instant::now()).unwrap();
        assert_eq!(restored.answers(), cache.answers());
        let expiry = restored.next_expiry().unwrap();
        let hour = Duration::from_secs(3600);
        assert!(expiry >= now + hour && expiry <= now + hour + Duration::from_secs(2), "{expiry:?}");
        // What expired while no agent ran is not restored.
        let wall = unix_seconds(SystemTime::now());
        let saved = format!(
            r#"{{"names":{{"api.example.com":{{"10.200.99.10":{}}},"old.example.com":{{"10.200.99.20":{}}}}}}}"#,
            wall + 100,
            wall - 1
        );
        std::fs::write(&path, saved).unwrap();
        let later = FqdnCache::restore(Duration::from_secs(2), &path, Instant::now()).unwrap();
        assert_eq!(learned(&later), [("api.example.com".to_string(), vec!["10.200.99.10".to_string()])]);
        std::fs::write(&path, "{not json").unwrap();
        assert!(FqdnCache::restore(Duration::from_secs(2), &path, Instant::now()).is_err());
    }

    #[test]
    fn an_answer_without_addresses_learns_nothing() {
        let mut cache = FqdnCache::new(Duration::from_secs(3600));
        let learned = cache.learn(&answer(&["nothing.example.com"], &[]), Instant::now());
        assert_eq!(learned, Learning { changed: false, generation: 0 });
        assert!(cache.answers().is_empty());
    }

    #[test]
    fn an_answer_needs_the_generation_of_its_newest_pair_whoever_taught_it() {
        let now = Instant::now();
        let mut cache = FqdnCache::new(Duration::from_secs(60));
        let api = answer(&["api.example.com"], &[("10.200.99.10", 30)]);
        let db = answer(&["db.example.com"], &[("10.200.99.20", 30)]);
        assert_eq!(cache.learn(&api, now), Learning { changed: true, generation: 1 });
        assert_eq!(cache.learn(&db, now), Learning { changed: true, generation: 2 });
        // Asked again (by another client, maybe before the datapath has generation 1): its pair
        // is known, and still needs generation 1 written.
        assert_eq!(cache.learn(&api, now), Learning { changed: false, generation: 1 });
        // A new address for a known name is a new generation.
        let api2 = answer(&["api.example.com"], &[("10.200.99.10", 30), ("10.200.99.11", 30)]);
        assert_eq!(cache.learn(&api2, now), Learning { changed: true, generation: 3 });
        assert_eq!(cache.generation(), 3);
        // Forgotten, then learned again: a new generation.
        assert!(cache.expire(now + Duration::from_secs(61)));
        assert_eq!(cache.learn(&db, now + Duration::from_secs(62)), Learning { changed: true, generation: 4 });
    }
}
