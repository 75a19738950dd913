//! The Git source of each rollout, as the reconciler sees it: when to fetch, the Secrets that go
//! with it, and what a fetch means for the engine ([`SourceObservation`]) and for the
//! PolicyRevision it may stage.
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use palisade_rollout::crd::{
    GitRef as SpecRef, GitSource, PolicyDocument, PolicyRevisionSpec, VerifyMode as SpecMode, VerifyProvider,
};
use palisade_rollout::engine::{ObservedRevision, PolicyRef, SourceObservation};
use palisade_source::{Credentials, GitRef, Keys, Outcome, SignatureStatus, Source, SourceSpec, Verify, VerifyMode};
use tracing::{info, warn};

use super::{Error, Metrics};

/// The result of the last fetch of one rollout's source.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub observation: SourceObservation,
    /// What to write as the PolicyRevision when the engine stages the observed revision.
    pub revision: Option<(String, PolicyRevisionSpec)>,
}

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
    pub fn new(cache_dir: PathBuf) -> Self {
        Sources { cache_dir, tracked: Mutex::default() }
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
        let (settings, digest) = match read_settings(due.source, secrets).await? {
            Ok(found) => found,
            Err(message) => {
                let last = Fetched { observation: SourceObservation::Unreachable { message }, revision: None };
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
                        let observation = SourceObservation::Unreachable { message: e.to_string() };
                        let last = Fetched { observation, revision: None };
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
            Ok(outcome) => to_fetched(outcome, rollout),
            Err(e) => {
                warn!(rollout = %due.key, error = %e, "fetch failed; what is enforced stays enforced");
                Fetched { observation: SourceObservation::Unreachable { message: e.to_string() }, revision: None }
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

/// The source settings and credentials of a rollout, with a digest of the Secrets' data; `Ok(Err)`
/// for a problem the user must fix, said so that the status can show it.
async fn read_settings(
    source: &GitSource,
    secrets: &impl SecretStore,
) -> Result<Result<((SourceSpec, Credentials), u64), String>, Error> {
    let mut digest = DefaultHasher::new();
    let credentials = match &source.secret_ref {
        None => Credentials::default(),
        Some(secret) => {
            let Some(data) = secrets.data(&secret.name).await? else {
                return Ok(Err(format!("spec.source.secretRef: Secret {} not found", secret.name)));
            };
            data.hash(&mut digest);
            match Credentials::from_map(&data) {
                Ok(credentials) => credentials,
                Err(e) => return Ok(Err(format!("spec.source.secretRef: Secret {}: {e}", secret.name))),
            }
        }
    };
    let mut spec = SourceSpec::new(&source.url, git_ref(&source.git_ref));
    spec.path = source.path.clone().unwrap_or_default();
    spec.ignore = source.ignore.clone().unwrap_or_default();
    spec.timeout = source.timeout.into();
    if let Some(verify) = &source.verify {
        let name = &verify.keys_ref.name;
        let Some(data) = secrets.data(name).await? else {
            return Ok(Err(format!("spec.source.verify.keysRef: Secret {name} not found")));
        };
        data.hash(&mut digest);
        match keys(verify.provider, &data) {
            Ok(keys) => spec.verify = Some(Verify { mode: verify_mode(verify.mode), keys }),
            Err(e) => return Ok(Err(format!("spec.source.verify.keysRef: Secret {name}: {e}"))),
        }
    }
    Ok(Ok(((spec, credentials), digest.finish())))
}

/// Where a rollout's Secrets come from: the API server, or local mode's files.
pub trait SecretStore: Sync {
    /// The data of the Secret `name` in the rollout's namespace, `None` when there is none.
    fn data(&self, name: &str) -> impl Future<Output = Result<Option<BTreeMap<String, Vec<u8>>>, Error>> + Send;
}

impl SecretStore for Api<Secret> {
    async fn data(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
        Ok(self.get_opt(name).await?.map(|secret| secret_data(&secret)))
    }
}

/// Local mode: Secrets given with the rollout, by name.
impl SecretStore for BTreeMap<String, Secret> {
    async fn data(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
        Ok(self.get(name).map(secret_data))
    }
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> =
        secret.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    // stringData is write-only in a real cluster; honoured for objects read as written.
    data.extend(secret.string_data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
    data
}

/// Every value of the keys Secret is a key file: armored OpenPGP keys or an allowed-signers file.
fn keys(provider: VerifyProvider, data: &BTreeMap<String, Vec<u8>>) -> Result<Keys, String> {
    let mut ssh = Vec::new();
    let mut pgp = Vec::new();
    for (key, bytes) in data {
        let text = std::str::from_utf8(bytes).map_err(|_| format!("{key}: not UTF-8"))?;
        match Keys::parse(text).map_err(|e| format!("{key}: {e}"))? {
            Keys::Ssh(signers) => ssh.extend(signers),
            Keys::OpenPgp(keys) => pgp.extend(keys),
        }
    }
    match provider {
        VerifyProvider::Ssh if !ssh.is_empty() && pgp.is_empty() => Ok(Keys::Ssh(ssh)),
        VerifyProvider::Openpgp if !pgp.is_empty() && ssh.is_empty() => Ok(Keys::OpenPgp(pgp)),
        VerifyProvider::Ssh => Err("provider ssh needs allowed-signers entries and no OpenPGP keys".into()),
        VerifyProvider::Openpgp => Err("provider openpgp needs armored OpenPGP public keys only".into()),
    }
}

fn git_ref(r: &SpecRef) -> GitRef {
    match (&r.branch, &r.tag, &r.semver, &r.commit) {
        (Some(b), ..) => GitRef::Branch(b.clone()),
        (_, Some(t), ..) => GitRef::Tag(t.clone()),
        (_, _, Some(s), _) => GitRef::Semver(s.clone()),
        (.., Some(c)) => GitRef::Commit(c.clone()),
        // Admission requires exactly one; the remote's HEAD is the harmless reading of none.
        _ => GitRef::Head,
    }
}

fn verify_mode(mode: SpecMode) -> VerifyMode {
    match mode {
        SpecMode::Head => VerifyMode::Head,
        SpecMode::Tag => VerifyMode::Tag,
        SpecMode::TagAndHead => VerifyMode::TagAndHEAD,
    }
}

/// `main@sha1:<sha>` → `main@a1b2c3d`, as `kubectl get` shows it.
fn display(reference: &str, commit: &str) -> String {
    let name = reference.split_once('@').map_or(reference, |(name, _)| name);
    format!("{name}@{}", &commit[..commit.len().min(7)])
}

/// The PolicyRevision name for revision `digest` of `rollout`: content-addressed, so a revert to
/// known content names the same object.
pub fn revision_name(rollout: &str, digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    // Object names are at most 253 characters; the suffix keeps them apart.
    let prefix: String = rollout.chars().take(253 - 13).collect();
    format!("{prefix}-{}", &hex[..hex.len().min(12)])
}

fn to_fetched(outcome: Outcome, rollout: &str) -> Fetched {
    match outcome {
        Outcome::Revision(revision) => {
            let name = revision_name(rollout, &revision.id);
            let display = display(&revision.reference, &revision.commit.id);
            let policies: Vec<PolicyDocument> = revision
                .policies
                .policies
                .iter()
                .map(|p| PolicyDocument {
                    kind: p.id.kind.as_str().into(),
                    name: p.id.name.clone(),
                    namespace: p.id.namespace.clone(),
                    content: serde_json::to_string(&p.source).unwrap_or_default(),
                })
                .collect();
            info!(rollout, revision = %name, commit = %revision.commit.id, "fetched a revision");
            let observed = ObservedRevision {
                id: name.clone(),
                commit: revision.commit.id.clone(),
                display: display.clone(),
                verified: matches!(revision.signature, SignatureStatus::Verified { .. }),
                policies: policies
                    .iter()
                    .map(|p| PolicyRef { kind: p.kind.clone(), name: p.name.clone(), namespace: p.namespace.clone() })
                    .collect(),
            };
            let spec = PolicyRevisionSpec {
                rollout: rollout.into(),
                commit: revision.commit.id,
                display,
                digest: revision.id,
                policy_count: policies.len() as u32,
                policies,
            };
            Fetched { observation: SourceObservation::Revision(observed), revision: Some((name, spec)) }
        }
        Outcome::Failed(failed) => {
            let display = display(&failed.reference, &failed.commit.id);
            let errors: Vec<String> = failed.problems.iter().map(ToString::to_string).collect();
            let commit = failed.commit.id;
            let observation = match failed.kind {
                palisade_source::FailureKind::Invalid => SourceObservation::Invalid { commit, display, errors },
                palisade_source::FailureKind::Unverified => {
                    SourceObservation::Unverified { commit, display, reason: errors.join("; ") }
                }
            };
            Fetched { observation, revision: None }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_ref_and_a_short_commit() {
        assert_eq!(display("main@sha1:0123456789abcdef", "0123456789abcdef"), "main@0123456");
        assert_eq!(display("v1.2.0@sha1:abc", "abc"), "v1.2.0@abc");
    }

    #[test]
    fn revision_names_are_content_addressed_and_short() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(revision_name("web", &digest), "web-abababababab");
        assert_eq!(revision_name(&"x".repeat(300), &digest).len(), 253);
    }
}
