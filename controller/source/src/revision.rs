//! Revisions: a commit's validated, normalized policies, named by the digest of their content so
//! that the same policies always get the same id, whatever commit carries them.
use palisade_policy::model::{Policy, PolicyId};
use palisade_policy::{Diagnostic, PolicySet, Severity};
use palisade_rollout::digest::combine;

use crate::verify::SignatureStatus;

/// One problem that keeps a commit from becoming a revision.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Path from the repository root; empty for problems with the commit as a whole.
    pub file: String,
    /// 1-based; 0 when the problem is not about one line.
    pub line: u32,
    pub message: String,
}

impl Problem {
    pub fn file(file: &str, message: impl Into<String>) -> Self {
        Problem { file: file.to_string(), line: 0, message: message.into() }
    }

    pub fn commit(message: impl Into<String>) -> Self {
        Problem::file("", message)
    }
}

impl From<&Diagnostic> for Problem {
    fn from(d: &Diagnostic) -> Self {
        let message = if d.path.is_empty() { d.message.clone() } else { format!("{}: {}", d.path, d.message) };
        Problem { file: d.file.clone(), line: d.line, message }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.file.is_empty(), self.line) {
            (true, _) => f.write_str(&self.message),
            (false, 0) => write!(f, "{}: {}", self.file, self.message),
            (false, line) => write!(f, "{}:{line}: {}", self.file, self.message),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CommitInfo {
    pub id: String,
    /// `Name <email>`.
    pub author: String,
    pub message: String,
    /// Seconds since the epoch.
    pub time: i64,
}

impl CommitInfo {
    pub fn of(commit: &git2::Commit<'_>) -> Self {
        let author = commit.author();
        CommitInfo {
            id: commit.id().to_string(),
            author: format!("{} <{}>", author.name().unwrap_or_default(), author.email().unwrap_or_default()),
            message: commit.message().unwrap_or_default().trim_end().to_string(),
            time: commit.time().seconds(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Revision {
    /// `sha256:<hex>` over the normalized policies (see [`digest`]).
    pub id: String,
    /// The ref as resolved, e.g. `main@sha1:<sha>`.
    pub reference: String,
    pub commit: CommitInfo,
    pub signature: SignatureStatus,
    pub policies: PolicySet,
    /// Lint warnings; they do not block a revision.
    pub warnings: Vec<Diagnostic>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureKind {
    /// Verification was asked for and the commit or tag did not pass it.
    Unverified,
    /// A file could not be read safely or a policy is invalid.
    Invalid,
}

/// A commit that did not become a revision, with every reason.
#[derive(Clone, Debug)]
pub struct FailedAttempt {
    pub reference: String,
    pub commit: CommitInfo,
    pub kind: FailureKind,
    pub problems: Vec<Problem>,
}

#[derive(Clone, Debug)]
pub enum Outcome {
    Revision(Revision),
    Failed(FailedAttempt),
}

impl Revision {
    /// `digests[i]` is [`policy_digest`] of `policies.policies[i]`.
    pub(crate) fn new(
        reference: String,
        commit: CommitInfo,
        signature: SignatureStatus,
        policies: PolicySet,
        digests: Vec<[u8; 32]>,
        diagnostics: Vec<Diagnostic>,
    ) -> Self {
        // Sorted by id so a revision reads the same whichever files the policies live in.
        let mut pairs: Vec<_> = policies.policies.into_iter().zip(digests).collect();
        pairs.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let id = combine(pairs.iter().map(|(_, d)| d));
        let mut policies = PolicySet { policies: pairs.into_iter().map(|(p, _)| p).collect() };
        policies.renumber();
        let warnings = diagnostics.into_iter().filter(|d| d.severity == Severity::Warning).collect();
        Revision { id, reference, commit, signature, policies, warnings }
    }
}

/// The revision id of a policy set: sha256 over the [`policy_digest`]s in id order. File names
/// are left out: moving a policy to another file changes nothing enforced.
pub fn digest(set: &PolicySet) -> String {
    let mut digests: Vec<(&PolicyId, [u8; 32])> = set.policies.iter().map(|p| (&p.id, policy_digest(p))).collect();
    digests.sort_by(|a, b| a.0.cmp(b.0));
    combine(digests.iter().map(|(_, d)| d))
}

/// A policy's digest as the agent recomputes it from the PolicyRevision
/// ([`palisade_rollout::digest::policy_digest`]).
pub fn policy_digest(policy: &Policy) -> [u8; 32] {
    let id = &policy.id;
    palisade_rollout::digest::policy_digest(id.kind.as_str(), id.namespace.as_deref(), &id.name, &policy.source)
}
