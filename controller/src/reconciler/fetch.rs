//! The Git source of each rollout, as the reconciler sees it: when to fetch, the mirror per
//! rollout, and the last fetch while it is fresh.
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use palisade_rollout::crd::GitSource;
use palisade_rollout::engine::SourceObservation;
use palisade_source::Source;
use tracing::{info, warn};

use super::revision::Fetched;
use super::source_settings::{AllowedSources, SecretStore, read_settings};
use super::{Error, Metrics};

/// Per rollout: the open mirror and the last fetch. Kept in memory only; a restarted controller
/// fetches once and then finds the same revision, which the engine treats as nothing new.
struct Tracked {
    /// Of `spec.source`: a change makes the next reconcile fetch.
    spec: u64,
    /// Of the spec and the Secrets' data: a change reopens the mirror with the new settings.
    settings: u64,
    source: Option<Arc<Mutex<Source>>>,
    fetched_at: Timestamp,
    last: Fetched,
    /// The `reconcile.palisade.dev/requestedAt` value already acted on.
    handled_request: Option<String>,
}

pub struct Sources {
    cache_dir: PathBuf,
    allowed: AllowedSources,
    tracked: Mutex<HashMap<String, Tracked>>,
}

/// What decides whether a fetch is due.
pub struct Due<'a> {
    /// `namespace/name` of the rollout.
    pub key: &'a str,
    pub source: &'a GitSource,
    pub requested_at: Option<&'a str>,
    pub now: Timestamp,
}

impl Sources {
    pub fn new(cache_dir: PathBuf, allowed: AllowedSources) -> Self {
        Sources { cache_dir, allowed, tracked: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.tracked.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last fetch while it is still fresh: within the interval, for the same spec, and no
    /// new sync requested since.
    pub fn fresh(&self, due: &Due) -> Option<Fetched> {
        let tracked = self.lock();
        let t = tracked.get(due.key)?;
        let interval = SignedDuration::try_from(std::time::Duration::from(due.source.interval)).ok()?;
        let fresh = t.spec == spec_fingerprint(due.source)
            && t.fetched_at.checked_add(interval).is_ok_and(|next| next > due.now)
            && t.handled_request.as_deref() == due.requested_at;
        fresh.then(|| t.last.clone())
    }

    /// How long until the next fetch of `key` is due.
    pub fn next_fetch(&self, key: &str, source: &GitSource, now: Timestamp) -> std::time::Duration {
        let interval = std::time::Duration::from(source.interval);
        let Some(fetched_at) = self.lock().get(key).map(|t| t.fetched_at) else { return interval };
        let elapsed = now.duration_since(fetched_at).unsigned_abs();
        interval.saturating_sub(elapsed).max(std::time::Duration::from_secs(1))
    }

    /// Reads the rollout's Secrets, fetches, and builds the commit its ref points at. `Err` only
    /// for what a retry may fix (the API server, a worker thread); everything the user must fix
    /// is an observation.
    pub async fn fetch(
        &self,
        due: &Due<'_>,
        namespace: &str,
        rollout: &str,
        secrets: &impl SecretStore,
        metrics: &Metrics,
    ) -> Result<Fetched, Error> {
        let spec = spec_fingerprint(due.source);
        if let Err(message) = self.allowed.check(&due.source.url) {
            warn!(rollout = %due.key, url = %due.source.url, "refusing an insecure source; nothing fetched");
            let last = Fetched::refused("InsecureSource", message);
            self.remember(due, spec, 0, None, last.clone());
            return Ok(last);
        }
        let (settings, digest) = match read_settings(due.source, secrets).await? {
            Ok(found) => found,
            Err(message) => {
                let last = Fetched::unreachable(message);
                self.remember(due, spec, 0, None, last.clone());
                return Ok(last);
            }
        };
        let settings_digest = fingerprint(&(spec, digest));
        let open = self.lock().get(due.key).filter(|t| t.settings == settings_digest).and_then(|t| t.source.clone());
        let source = match open {
            Some(source) => source,
            None => {
                // A mirror per rollout, so one tenant's credentials never serve another's fetch.
                let dir = self.cache_dir.join(namespace).join(rollout);
                let (source_spec, credentials) = settings;
                match tokio::task::spawn_blocking(move || Source::open(source_spec, credentials, &dir)).await? {
                    Ok(source) => Arc::new(Mutex::new(source)),
                    Err(e) => {
                        let last = Fetched::unreachable(e.to_string());
                        self.remember(due, spec, settings_digest, None, last.clone());
                        return Ok(last);
                    }
                }
            }
        };
        let started = Instant::now();
        let worker = source.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let source = worker.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            source.sync(&mut |_| {})
        })
        .await?;
        metrics.source_fetch.observe(started.elapsed().as_secs_f64());
        let fetched = match outcome {
            Ok(outcome) => {
                let fetched = Fetched::from_outcome(outcome, rollout);
                if let SourceObservation::Revision(revision) = &fetched.observation {
                    info!(rollout, revision = %revision.id, commit = %revision.commit, "fetched a revision");
                }
                fetched
            }
            Err(e) => {
                warn!(rollout = %due.key, error = %e, "fetch failed; what is enforced stays enforced");
                Fetched::unreachable(e.to_string())
            }
        };
        self.remember(due, spec, settings_digest, Some(source), fetched.clone());
        Ok(fetched)
    }

    fn remember(&self, due: &Due, spec: u64, settings: u64, source: Option<Arc<Mutex<Source>>>, last: Fetched) {
        let handled_request = due.requested_at.map(Into::into);
        let tracked = Tracked { spec, settings, source, fetched_at: due.now, last, handled_request };
        self.lock().insert(due.key.to_string(), tracked);
    }

    /// Forgets a deleted rollout and removes its mirror.
    pub fn forget(&self, key: &str, namespace: &str, rollout: &str) {
        self.lock().remove(key);
        let dir = self.cache_dir.join(namespace).join(rollout);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(dir = %dir.display(), error = %e, "could not remove the mirror");
        }
    }
}

fn spec_fingerprint(source: &GitSource) -> u64 {
    fingerprint(&serde_json::to_string(source).unwrap_or_default())
}

fn fingerprint(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}
