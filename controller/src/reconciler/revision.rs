//! What a fetch of a rollout's Git source means: the observation the engine decides on, and the
//! PolicyRevision (the CRD) the engine may stage from a [`palisade_source::Revision`].
use palisade_rollout::crd::{PolicyDocument, PolicyRevision, PolicyRevisionSpec};
use palisade_rollout::engine::{ObservedRevision, PolicyRef, SourceObservation};
use palisade_source::{FailureKind, Outcome, SignatureStatus};

/// The largest PolicyRevision staged, serialized: the API server refuses objects not far above
/// (etcd stores at most 1.5 MiB), and the agents load every revision into memory.
const REVISION_MAX_BYTES: usize = 1024 * 1024;

/// The errors of one failed commit kept in the status, each cut to [`ERROR_MAX_CHARS`], so that
/// the status stays within its schema's bounds however broken the commit is.
const ERRORS_KEPT: usize = 20;
const ERROR_MAX_CHARS: usize = 1000;

/// The result of the last fetch of one rollout's source.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub observation: SourceObservation,
    /// What to write as the PolicyRevision when the engine stages the observed revision.
    pub revision: Option<(String, PolicyRevisionSpec)>,
}

impl Fetched {
    /// The source could not be read; what is enforced stays enforced.
    pub fn unreachable(message: String) -> Fetched {
        Fetched { observation: SourceObservation::Unreachable { message }, revision: None }
    }

    /// The source may not be read at all; nothing was fetched and what is enforced stays.
    pub fn refused(reason: &'static str, message: String) -> Fetched {
        Fetched { observation: SourceObservation::Refused { reason, message }, revision: None }
    }

    /// A fetch's outcome for `rollout`: a revision to observe and stage, or why there is none.
    pub fn from_outcome(outcome: Outcome, rollout: &str) -> Fetched {
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
                let observed = ObservedRevision {
                    id: name.clone(),
                    commit: revision.commit.id.clone(),
                    display: display.clone(),
                    verified: matches!(revision.signature, SignatureStatus::Verified { .. }),
                    policies: policies
                        .iter()
                        .map(|p| PolicyRef {
                            kind: p.kind.clone(),
                            name: p.name.clone(),
                            namespace: p.namespace.clone(),
                        })
                        .collect(),
                    host_policy: revision.policies.policies.iter().any(|p| p.is_host_policy()),
                };
                let spec = PolicyRevisionSpec {
                    rollout: rollout.into(),
                    commit: revision.commit.id,
                    display,
                    digest: revision.id,
                    policy_count: policies.len() as u32,
                    policies,
                };
                let size = serialized_size(&name, &spec);
                if size > REVISION_MAX_BYTES {
                    let error = format!(
                        "the PolicyRevision would be {size} bytes serialized, over the limit of {REVISION_MAX_BYTES} \
                         bytes (1 MiB); split the policies over several rollouts"
                    );
                    let observation = SourceObservation::Rejected {
                        commit: spec.commit,
                        display: spec.display,
                        id: name,
                        reason: "RevisionTooLarge",
                        errors: vec![error],
                    };
                    return Fetched { observation, revision: None };
                }
                Fetched { observation: SourceObservation::Revision(observed), revision: Some((name, spec)) }
            }
            Outcome::Failed(failed) => {
                let display = display(&failed.reference, &failed.commit.id);
                let errors = bounded(failed.problems.iter().map(ToString::to_string));
                let commit = failed.commit.id;
                let observation = match failed.kind {
                    FailureKind::Invalid => SourceObservation::Invalid { commit, display, errors },
                    FailureKind::Unverified => {
                        SourceObservation::Unverified { commit, display, reason: errors.join("; ") }
                    }
                };
                Fetched { observation, revision: None }
            }
        }
    }
}

/// The size of the PolicyRevision object as the API server would store it (metadata aside from
/// the name is a few hundred bytes).
fn serialized_size(name: &str, spec: &PolicyRevisionSpec) -> usize {
    let object = PolicyRevision::new(name, spec.clone());
    serde_json::to_vec(&object).expect("a PolicyRevision serializes to JSON").len()
}

/// The first [`ERRORS_KEPT`] errors, each cut to [`ERROR_MAX_CHARS`], and how many more there were.
fn bounded(errors: impl ExactSizeIterator<Item = String>) -> Vec<String> {
    let more = errors.len().saturating_sub(ERRORS_KEPT);
    let mut kept: Vec<String> = errors
        .take(ERRORS_KEPT)
        .map(|e| {
            if e.chars().count() > ERROR_MAX_CHARS {
                e.chars().take(ERROR_MAX_CHARS).chain(['…']).collect()
            } else {
                e
            }
        })
        .collect();
    if more > 0 {
        kept.push(format!("and {more} more errors"));
    }
    kept
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_ref_and_a_short_commit() {
        assert_eq!(display("main@sha1:0123456789abcdef", "0123456789abcdef"), "main@0123456");
        assert_eq!(display("v1.2.0@sha1:abc", "abc"), "v1.2.0@abc");
    }

    #[test]
    fn a_broken_commit_keeps_few_short_errors_in_the_status() {
        let errors =
            bounded((0..50).map(|i| format!("policy-{i}.yaml: {}", "x".repeat(5000))).collect::<Vec<_>>().into_iter());
        assert_eq!(errors.len(), ERRORS_KEPT + 1);
        assert!(
            errors[..ERRORS_KEPT].iter().all(|e| e.chars().count() == ERROR_MAX_CHARS + 1),
            "cut, with an ellipsis"
        );
        assert_eq!(errors[ERRORS_KEPT], "and 30 more errors");
        assert_eq!(bounded(vec!["one".to_string()].into_iter()), ["one"]);
    }

    #[test]
    fn revision_names_are_content_addressed_and_short() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(revision_name("web", &digest), "web-abababababab");
        assert_eq!(revision_name(&"x".repeat(300), &digest).len(), 253);
    }

    #[test]
    fn a_staged_revision_verifies_against_its_digest_as_the_agent_checks_it() {
        let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: db, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: db}}\n  ingress: [{fromEndpoints: [{matchLabels: {app: api}}]}]\n---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: all}\nspec: {endpointSelector: {}, egress: [{toEntities: [world]}]}\n";
        let parsed = palisade_policy::parse_policies(
            &[palisade_policy::SourceFile { name: "policies.yaml", text }],
            &palisade_policy::ParseOptions::default(),
        );
        assert!(!parsed.has_errors(), "{:?}", parsed.errors().map(ToString::to_string).collect::<Vec<_>>());
        let mut policies = parsed.set;
        policies.policies.sort_by(|a, b| a.id.cmp(&b.id));
        let revision = palisade_source::Revision {
            id: palisade_source::revision::digest(&policies),
            reference: "main@sha1:0123456789".into(),
            commit: palisade_source::CommitInfo {
                id: "0123456789".into(),
                author: String::new(),
                message: String::new(),
                time: 0,
            },
            signature: palisade_source::SignatureStatus::NotRequired,
            policies,
            warnings: Vec::new(),
        };
        let (_, spec) = Fetched::from_outcome(Outcome::Revision(revision), "db").revision.expect("a revision");
        assert_eq!(spec.verify_digest(), Ok(()));
    }
}
