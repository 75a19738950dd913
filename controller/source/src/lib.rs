//! The Palisade Git source: a mirror per repository fetched incrementally, refs resolved in it,
//! signatures verified, policy files read safely out of the commit's tree, and each commit turned
//! into a content-addressed [`Revision`] or a [`FailedAttempt`] listing every problem. Also the
//! push webhook receiver that triggers a sync.
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_policy::{ParseOptions, Parsed, SourceFile, parse_policies};
use tracing::{info, warn};

pub mod credentials;
mod error;
pub mod fetch;
pub mod read;
pub mod revision;
pub mod verify;
pub mod webhook;

pub use credentials::Credentials;
pub use error::{Error, Result};
pub use fetch::{GitRef, Progress, Resolved};
pub use read::ReadLimits;
pub use revision::{CommitInfo, FailedAttempt, FailureKind, Outcome, Problem, Revision};
pub use verify::{Keys, SignatureStatus, Verify, VerifyMode};

/// What to fetch and how to read it (the `source` of a PolicyRollout).
#[derive(Clone, Debug)]
pub struct SourceSpec {
    /// `file://`, a plain path, `git://`, `https://` or `ssh://`.
    pub url: String,
    pub reference: GitRef,
    /// Directory inside the repository holding the policies; empty for all of it.
    pub path: String,
    /// .gitignore-syntax patterns, added to the repository's `.palisadeignore`.
    pub ignore: String,
    pub timeout: Duration,
    pub verify: Option<Verify>,
    pub limits: ReadLimits,
    pub parse: ParseOptions,
}

impl SourceSpec {
    pub fn new(url: impl Into<String>, reference: GitRef) -> Self {
        SourceSpec {
            url: url.into(),
            reference,
            path: String::new(),
            ignore: String::new(),
            // Flux's default.
            timeout: Duration::from_secs(60),
            verify: None,
            limits: ReadLimits::default(),
            parse: ParseOptions::default(),
        }
    }
}

/// Records the last commit that became a revision, so it stays available when the server is not.
const LAST_REVISION_FILE: &str = "palisade-last-revision.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct LastRevision {
    commit: String,
    tag: Option<String>,
    reference: String,
}

/// Each file parsed on its own, with the digest of each of its policies, by blob and name.
type ParseCache = HashMap<(git2::Oid, String), Arc<(Parsed, Vec<[u8; 32]>)>>;

pub struct Source {
    spec: SourceSpec,
    credentials: Credentials,
    mirror: fetch::Mirror,
    /// The files of the last build, so an incremental sync parses only the files that changed.
    parsed: Mutex<ParseCache>,
}

impl Source {
    /// Opens (or creates) the mirror of `spec.url` under `cache_dir`. Nothing is fetched yet.
    pub fn open(spec: SourceSpec, credentials: Credentials, cache_dir: &Path) -> Result<Self> {
        let mirror = fetch::Mirror::open(cache_dir, &spec.url)?;
        Ok(Source { spec, credentials, mirror, parsed: Mutex::default() })
    }

    pub fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    /// Fetches what changed, resolves the ref and builds the commit it points at.
    pub fn sync(&self, progress: &mut dyn FnMut(Progress)) -> Result<Outcome> {
        self.mirror.fetch(&self.spec.reference, &self.credentials, self.spec.timeout, progress)?;
        let resolved = self.mirror.resolve(&self.spec.reference)?;
        let outcome = self.build(&resolved)?;
        if let Outcome::Revision(revision) = &outcome {
            self.remember(&resolved)?;
            info!(url = %self.spec.url, revision = %revision.id, reference = %resolved.name, "revision");
        }
        Ok(outcome)
    }

    /// The last commit that became a revision, rebuilt from the mirror without the network.
    pub fn last_revision(&self) -> Result<Option<Revision>> {
        let path = self.mirror.path().join(LAST_REVISION_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::CacheIo { path, source }),
        };
        let bad = |message: String| Error::CacheIo { path: path.clone(), source: std::io::Error::other(message) };
        let last: LastRevision = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let oid = |s: &str| git2::Oid::from_str(s).map_err(|e| bad(e.message().to_string()));
        let resolved = Resolved {
            commit: oid(&last.commit)?,
            tag: last.tag.as_deref().map(oid).transpose()?,
            name: last.reference,
        };
        match self.build(&resolved)? {
            Outcome::Revision(revision) => Ok(Some(revision)),
            Outcome::Failed(failed) => {
                // Only when the rules changed since (new keys, new limits).
                warn!(commit = %failed.commit.id, "the last revision no longer passes");
                Ok(None)
            }
        }
    }

    /// Verifies, reads and parses a resolved commit. `Err` only when the mirror cannot be read.
    pub fn build(&self, resolved: &Resolved) -> Result<Outcome> {
        let repo = &self.mirror.repo;
        let cache_error = |source| Error::Cache { path: self.mirror.path().into(), source };
        let commit = repo.find_commit(resolved.commit).map_err(|_| Error::RefNotFound {
            url: self.spec.url.clone(),
            reference: self.spec.reference.to_string(),
        })?;
        let info = CommitInfo::of(&commit);
        let failed = |kind, problems| {
            Outcome::Failed(FailedAttempt { reference: resolved.name.clone(), commit: info.clone(), kind, problems })
        };
        let signature = match &self.spec.verify {
            None => SignatureStatus::NotRequired,
            Some(verify) => match verify.check(repo, resolved) {
                Ok(status) => status,
                Err(reason) => {
                    warn!(url = %self.spec.url, reference = %resolved.name, %reason, "verification failed");
                    return Ok(failed(FailureKind::Unverified, vec![Problem::commit(reason)]));
                }
            },
        };
        let tree = commit.tree().map_err(cache_error)?;
        let files = match read::read_policy_files(repo, &tree, &self.spec.path, &self.spec.ignore, &self.spec.limits) {
            Ok(files) => files,
            Err(problems) => return Ok(failed(FailureKind::Invalid, problems)),
        };
        let (parsed, digests) = {
            let mut cache = self.parsed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            parse_files(&files, &self.spec.parse, &mut cache)
        };
        if parsed.has_errors() {
            return Ok(failed(FailureKind::Invalid, parsed.errors().map(Problem::from).collect()));
        }
        Ok(Outcome::Revision(Revision::new(
            resolved.name.clone(),
            info,
            signature,
            parsed.set,
            digests,
            parsed.diagnostics,
        )))
    }

    fn remember(&self, resolved: &Resolved) -> Result<()> {
        let last = LastRevision {
            commit: resolved.commit.to_string(),
            tag: resolved.tag.map(|t| t.to_string()),
            reference: resolved.name.clone(),
        };
        let path = self.mirror.path().join(LAST_REVISION_FILE);
        // Written aside and renamed, so a crash never leaves half a record.
        let temporary = path.with_extension("tmp");
        let text = serde_json::to_string(&last).unwrap_or_default();
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(|source| Error::CacheIo { path, source })
    }
}

/// What `parse_policies` makes of all `files` at once, with each policy's digest, parsing only
/// the files not in `cache`; leaves exactly this build's files in `cache`.
fn parse_files(files: &[read::ReadFile], options: &ParseOptions, cache: &mut ParseCache) -> (Parsed, Vec<[u8; 32]>) {
    let mut kept = ParseCache::with_capacity(files.len());
    let mut merged = Parsed::default();
    let mut digests = Vec::new();
    let mut seen = BTreeSet::new();
    for file in files {
        let key = (file.id, file.name.clone());
        let entry = cache.remove(&key).unwrap_or_else(|| {
            let parsed = parse_policies(&[SourceFile { name: &file.name, text: &file.text }], options);
            let digests = parsed.set.policies.iter().map(revision::policy_digest).collect();
            Arc::new((parsed, digests))
        });
        let (parsed, file_digests) = &*entry;
        merged.diagnostics.extend(parsed.diagnostics.iter().cloned());
        for (policy, digest) in parsed.set.policies.iter().zip(file_digests) {
            // Within one file the parser has already checked; across files it is checked here.
            if merged.push_unique(policy.clone(), &mut seen) {
                digests.push(*digest);
            }
        }
        kept.insert(key, entry);
    }
    if !merged.enforce_limit() {
        digests.clear();
    }
    *cache = kept;
    (merged, digests)
}
