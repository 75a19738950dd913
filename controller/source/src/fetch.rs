//! The mirror: a bare repository per URL in the cache directory, fetched incrementally with
//! force-updating refspecs so a force-push replaces what was there.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use git2::{AutotagOption, CertificateCheckStatus, Cred, FetchOptions, FetchPrune, Oid, RemoteCallbacks, Repository};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use crate::credentials::Credentials;
use crate::error::{Error, Result};

/// What to check out of the repository. Like Flux, `commit` pins an exact commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GitRef {
    /// The branch the remote's HEAD points at.
    Head,
    Branch(String),
    Tag(String),
    /// The highest tag (an optional leading `v` allowed) matching a semver range.
    Semver(String),
    Commit(String),
}

impl GitRef {
    /// The first of a branch, a tag, a semver range and a commit that is given (a rollout's
    /// `spec.source.ref` and `palisade source fetch` take one at most); the remote's HEAD when
    /// none is.
    pub fn first_of(branch: Option<&str>, tag: Option<&str>, semver: Option<&str>, commit: Option<&str>) -> GitRef {
        match (branch, tag, semver, commit) {
            (Some(b), ..) => GitRef::Branch(b.into()),
            (_, Some(t), ..) => GitRef::Tag(t.into()),
            (_, _, Some(s), _) => GitRef::Semver(s.into()),
            (.., Some(c)) => GitRef::Commit(c.into()),
            _ => GitRef::Head,
        }
    }
}

impl std::fmt::Display for GitRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitRef::Head => f.write_str("HEAD"),
            GitRef::Branch(b) => write!(f, "branch {b}"),
            GitRef::Tag(t) => write!(f, "tag {t}"),
            GitRef::Semver(r) => write!(f, "semver {r}"),
            GitRef::Commit(c) => write!(f, "commit {c}"),
        }
    }
}

/// A ref resolved in the mirror.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub commit: Oid,
    /// The annotated tag object, when the ref is a tag or semver range and the tag is annotated.
    pub tag: Option<Oid>,
    /// e.g. `main@sha1:<sha>`, `v1.2.0@sha1:<sha>`, like Flux's artifact revision.
    pub name: String,
}

/// Fetch progress, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub received_objects: usize,
    pub total_objects: usize,
    pub received_bytes: usize,
}

/// Where the local ref lands: a private namespace, so the mirror never confuses what it fetched
/// for HEAD with a branch of the same name.
const HEAD_REF: &str = "refs/palisade/HEAD";

pub struct Mirror {
    pub(crate) repo: Repository,
    url: String,
}

impl Mirror {
    /// The mirror of `url` under `cache_dir`, created when missing.
    pub fn open(cache_dir: &Path, url: &str) -> Result<Self> {
        let path = mirror_path(cache_dir, url);
        let repo = match Repository::open_bare(&path) {
            Ok(repo) => repo,
            Err(_) => {
                std::fs::create_dir_all(&path).map_err(|source| Error::CacheIo { path: path.clone(), source })?;
                Repository::init_bare(&path).map_err(|source| Error::Cache { path: path.clone(), source })?
            }
        };
        Ok(Mirror { repo, url: url.to_string() })
    }

    pub fn path(&self) -> &Path {
        self.repo.path()
    }

    /// Brings the refs `reference` needs up to date. Only what changed since the last fetch is
    /// transferred.
    pub fn fetch(
        &self,
        reference: &GitRef,
        credentials: &Credentials,
        timeout: Duration,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<()> {
        let started = Instant::now();
        let deadline = started + timeout;
        set_socket_timeouts(timeout);
        let refspecs: Vec<String> = match reference {
            GitRef::Head => vec![format!("+HEAD:{HEAD_REF}")],
            GitRef::Branch(b) => vec![format!("+refs/heads/{b}:refs/heads/{b}")],
            GitRef::Tag(t) => vec![format!("+refs/tags/{t}:refs/tags/{t}")],
            GitRef::Semver(_) => vec!["+refs/tags/*:refs/tags/*".into()],
            // A commit must be reachable from something the server advertises.
            GitRef::Commit(_) => vec!["+refs/heads/*:refs/heads/*".into(), "+refs/tags/*:refs/tags/*".into()],
        };
        let mut timed_out = false;
        let result = {
            let mut callbacks = RemoteCallbacks::new();
            let mut tried_credentials = false;
            callbacks.credentials(|_url, username, allowed| {
                // libgit2 asks again after a refused credential; stop instead of looping.
                if std::mem::replace(&mut tried_credentials, true) {
                    return Err(git2::Error::from_str("authentication failed"));
                }
                credential(credentials, username, allowed)
            });
            callbacks.certificate_check(|cert, host| check_host_key(credentials, cert, host));
            callbacks.transfer_progress(|stats| {
                progress(Progress {
                    received_objects: stats.received_objects(),
                    total_objects: stats.total_objects(),
                    received_bytes: stats.received_bytes(),
                });
                // Returning false cancels the transfer.
                let within = Instant::now() < deadline;
                timed_out |= !within;
                within
            });
            let mut options = FetchOptions::new();
            options.remote_callbacks(callbacks).download_tags(AutotagOption::None);
            if matches!(reference, GitRef::Semver(_) | GitRef::Commit(_)) {
                options.prune(FetchPrune::On);
            }
            let bearer = credentials.bearer_token.as_ref().map(|t| format!("Authorization: Bearer {t}"));
            if let Some(header) = &bearer {
                options.custom_headers(&[header.as_str()]);
            }
            let mut remote = self
                .repo
                .remote_anonymous(&self.url)
                .map_err(|source| Error::Fetch { url: self.url.clone(), source })?;
            remote.fetch(&refspecs, Some(&mut options), None)
        };
        match result {
            Ok(()) => {
                info!(url = %self.url, %reference, elapsed_ms = started.elapsed().as_millis() as u64, "fetched");
                Ok(())
            }
            Err(_) if timed_out => Err(Error::Timeout { url: self.url.clone(), timeout }),
            Err(source) => Err(Error::Fetch { url: self.url.clone(), source }),
        }
    }

    /// Resolves `reference` against what the mirror holds, without touching the network.
    pub fn resolve(&self, reference: &GitRef) -> Result<Resolved> {
        let not_found = || Error::RefNotFound { url: self.url.clone(), reference: reference.to_string() };
        let (name, target) = match reference {
            GitRef::Head => ("HEAD".to_string(), self.repo.refname_to_id(HEAD_REF).map_err(|_| not_found())?),
            GitRef::Branch(b) => {
                (b.clone(), self.repo.refname_to_id(&format!("refs/heads/{b}")).map_err(|_| not_found())?)
            }
            GitRef::Tag(t) => (t.clone(), self.repo.refname_to_id(&format!("refs/tags/{t}")).map_err(|_| not_found())?),
            GitRef::Semver(range) => self.highest_tag(range)?,
            GitRef::Commit(c) => {
                let oid = Oid::from_str(c).map_err(|_| not_found())?;
                (c.clone(), oid)
            }
        };
        let object = self.repo.find_object(target, None).map_err(|_| not_found())?;
        let tag = object.as_tag().map(|t| t.id());
        let commit = object.peel_to_commit().map_err(|_| not_found())?.id();
        Ok(Resolved { commit, tag, name: format!("{name}@sha1:{commit}") })
    }

    fn highest_tag(&self, range: &str) -> Result<(String, Oid)> {
        let req = semver::VersionReq::parse(range).map_err(|source| Error::BadRange { range: range.into(), source })?;
        let mut best: Option<(semver::Version, String)> = None;
        let names = self.repo.tag_names(None).map_err(|source| Error::Cache { path: self.path().into(), source })?;
        for name in names.iter().flatten() {
            let Ok(version) = semver::Version::parse(name.strip_prefix('v').unwrap_or(name)) else { continue };
            if req.matches(&version) && best.as_ref().is_none_or(|(b, _)| version > *b) {
                best = Some((version, name.to_string()));
            }
        }
        let (_, name) = best.ok_or_else(|| Error::NoSemverMatch { url: self.url.clone(), range: range.into() })?;
        let oid = self
            .repo
            .refname_to_id(&format!("refs/tags/{name}"))
            .map_err(|source| Error::Cache { path: self.path().into(), source })?;
        Ok((name, oid))
    }
}

/// One directory per URL, named by its digest so any URL is a safe file name.
fn mirror_path(cache_dir: &Path, url: &str) -> PathBuf {
    let digest = hex::encode(Sha256::digest(url.as_bytes()));
    cache_dir.join(format!("{}.git", &digest[..24]))
}

/// libgit2's socket timeouts are process-wide; every source uses its own fetch timeout, so the
/// last one set wins for connects and reads, and the deadline in the progress callback bounds
/// each fetch as a whole.
fn set_socket_timeouts(timeout: Duration) {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: these only store an integer in libgit2's global settings.
    unsafe {
        let _ = git2::opts::set_server_connect_timeout_in_milliseconds(ms);
        let _ = git2::opts::set_server_timeout_in_milliseconds(ms);
    }
}

fn credential(
    credentials: &Credentials,
    username: Option<&str>,
    allowed: git2::CredentialType,
) -> Result<Cred, git2::Error> {
    if allowed.contains(git2::CredentialType::SSH_KEY)
        && let Some(identity) = &credentials.identity
    {
        let user = username.or(credentials.username.as_deref()).unwrap_or("git");
        return Cred::ssh_key_from_memory(user, None, identity, credentials.password.as_deref());
    }
    if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT)
        && let (Some(user), Some(password)) = (&credentials.username, &credentials.password)
    {
        return Cred::userpass_plaintext(user, password);
    }
    if allowed.contains(git2::CredentialType::USERNAME) {
        return Cred::username(username.or(credentials.username.as_deref()).unwrap_or("git"));
    }
    Err(git2::Error::from_str("the server asks for credentials and none were given"))
}

/// SSH host keys are pinned by `known_hosts`; without it an SSH server is refused rather than
/// trusted on first use. TLS certificates are left to libgit2's usual verification.
fn check_host_key(
    credentials: &Credentials,
    cert: &git2::cert::Cert<'_>,
    host: &str,
) -> Result<CertificateCheckStatus, git2::Error> {
    let Some(hostkey) = cert.as_hostkey() else { return Ok(CertificateCheckStatus::CertificatePassthrough) };
    let Some(presented) = hostkey.hostkey() else {
        return Err(git2::Error::from_str(&format!("{host}: no raw host key to check")));
    };
    let Some(known) = &credentials.known_hosts else {
        return Err(git2::Error::from_str(&format!("{host}: no known_hosts given for an SSH URL")));
    };
    // The secret belongs to this one source, so any key it lists is a key the server may use.
    if known.iter().any(|key| key.to_bytes().is_ok_and(|bytes| bytes == presented)) {
        debug!(host, "host key matches known_hosts");
        Ok(CertificateCheckStatus::CertificateOk)
    } else {
        Err(git2::Error::from_str(&format!("{host}: host key is not in known_hosts")))
    }
}
