use std::path::PathBuf;
use std::time::Duration;

/// Why a sync could not even look at a commit: the repository, the ref or the cache was out of
/// reach. Problems with the content of a commit are a [`crate::FailedAttempt`] instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url}: could not fetch: {source}")]
    Fetch { url: String, source: git2::Error },
    #[error("{url}: fetch timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: {reference} not found")]
    RefNotFound { url: String, reference: String },
    #[error("{url}: no tag matches the semver range {range}")]
    NoSemverMatch { url: String, range: String },
    #[error("semver range {range:?}: {source}")]
    BadRange { range: String, source: semver::Error },
    #[error("credentials: {key}: {message}")]
    Credentials { key: &'static str, message: String },
    #[error("verification keys: {0}")]
    Keys(String),
    #[error("ignore patterns: {0}")]
    Ignore(String),
    #[error("{}: cache: {source}", path.display())]
    Cache { path: PathBuf, source: git2::Error },
    #[error("{}: cache: {source}", path.display())]
    CacheIo { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
