//! What the source offers: a commit that fails (invalid, unsigned, out of scope) or a revision
//! that becomes the candidate, supersedes one, is fast-tracked, or is refused after an abort.
use super::*;

impl<'a> Engine<'a> {
    pub(super) fn observe(&mut self, source: &SourceObservation) {
        match source {
            SourceObservation::Unreachable { .. } | SourceObservation::Refused { .. } => {}
            SourceObservation::Rejected { commit, display, id, reason, errors } => {
                self.fail(commit, display, Some(id), reason, errors.clone())
            }
            SourceObservation::Invalid { commit, display, errors } => {
                self.fail(commit, display, None, "ValidationFailed", errors.clone())
            }
            SourceObservation::Unverified { commit, display, reason } => {
                self.fail(commit, display, None, "VerificationFailed", vec![reason.clone()])
            }
            SourceObservation::Revision(rev) => {
                if self.spec.source.verify.is_some() && !rev.verified {
                    let error = format!("commit {} is not signed by a key in spec.source.verify.keysRef", rev.commit);
                    return self.fail(&rev.commit, &rev.display, Some(&rev.id), "VerificationFailed", vec![error]);
                }
                let violations = scope_violations(self.spec.scope, self.ctx, &rev.policies);
                if !violations.is_empty() {
                    return self.fail(&rev.commit, &rev.display, Some(&rev.id), "ScopeViolation", violations);
                }
                self.offer(rev);
            }
        }
    }

    /// A commit that cannot be staged: recorded once, and nothing enforced or audited changes.
    fn fail(&mut self, commit: &str, display: &str, id: Option<&str>, reason: &str, errors: Vec<String>) {
        let attempt = AttemptedRevision {
            commit: commit.into(),
            display: display.into(),
            id: id.map(Into::into),
            reason: Some(reason.into()),
            errors,
        };
        if self.st.last_attempted_revision.as_ref() == Some(&attempt) {
            return;
        }
        let message = format!("{display} was not staged ({reason}): {}", attempt.errors.join("; "));
        let rev = RevisionRef { id: id.unwrap_or_default().into(), commit: commit.into(), display: display.into() };
        self.record(&rev, Outcome::Failed, attempt.errors.join("; "));
        self.st.last_attempted_revision = Some(attempt);
        if self.st.candidate_revision.is_none() {
            self.st.phase = Phase::Failed;
        }
        self.event(
            EventType::Warning,
            "RevisionFailed",
            format!("{message}; still enforcing {}", self.enforced_display()),
        );
    }

    fn offer(&mut self, rev: &ObservedRevision) {
        let new = rev.to_ref();
        if self.flipping() {
            // Finish the flip first; the source is read again on the next reconcile.
            return;
        }
        self.st.last_attempted_revision = Some(AttemptedRevision {
            commit: new.commit.clone(),
            display: new.display.clone(),
            id: Some(new.id.clone()),
            reason: None,
            errors: vec![],
        });
        if self.aborted(&new) {
            return;
        }
        if let Some(candidate) = self.st.candidate_revision.as_mut().filter(|c| c.id == new.id) {
            // Same content under a new commit: the audit's evidence still holds, unless it
            // blocked the candidate: a new commit is one of the ways out of Blocked.
            let fresh_commit = candidate.commit != new.commit;
            *candidate = new.clone();
            if fresh_commit && self.st.blocked.is_some() {
                self.restart_audit(format!("new commit {} of the blocked content", new.display), None);
            }
            return;
        }
        if self.st.rolled_back_revisions.iter().any(|r| r.id == new.id && r.commit == new.commit) {
            self.supersede(&format!("{} was rolled back", new.display));
            self.st.phase = Phase::RolledBack;
            return;
        }
        if self.st.enforced_revision.as_ref().is_some_and(|e| e.id == new.id) {
            let was_elsewhere = self.st.candidate_revision.is_some() || self.st.phase != Phase::Enforced;
            self.supersede(&format!("the source is back at the enforced content ({})", new.display));
            if was_elsewhere {
                self.st.phase = Phase::Enforced;
                self.event(EventType::Normal, "UpToDate", format!("{} is already enforced", new.display));
            }
            return;
        }
        let conflicts = self.conflicts(rev);
        if !conflicts.is_empty() {
            return self.fail(&rev.commit, &rev.display, Some(&rev.id), "Conflict", conflicts);
        }
        self.supersede(&format!("superseded by {}", new.display));
        let host_policy = rev.host_policy;
        let fast_track = self.spec.rollback.fast_track_reverts && self.known_good(&new.id) && !host_policy;
        self.st.candidate_revision = Some(new.clone());
        self.reset_audit();
        self.st.candidate_staged_at = Some(self.now());
        if fast_track {
            self.st.phase = Phase::Promoting;
            let message =
                format!("{} reverts to a revision enforced before; promoting without a new audit", new.display);
            self.event(EventType::Normal, "FastTrack", message);
        } else {
            self.st.audit_started_at = Some(self.now());
            self.st.audit_terms = Some(self.terms(host_policy));
            self.st.phase = Phase::Auditing;
            let message = format!("auditing {} beside {}", new.display, self.enforced_display());
            self.event(EventType::Normal, "AuditStarted", message);
        }
        self.actions.push(Action::StageCandidate(new));
    }

    /// The policies of `rev` that another rollout already stages or enforces, as errors.
    fn conflicts(&self, rev: &ObservedRevision) -> Vec<String> {
        rev.policies
            .iter()
            .flat_map(|policy| self.claims.iter().filter(move |c| &c.policy == policy))
            .map(|c| {
                let name = match &c.policy.namespace {
                    Some(ns) => format!("{ns}/{}", c.policy.name),
                    None => c.policy.name.clone(),
                };
                format!(
                    "{} {name} is already carried by PolicyRollout {} ({}); one policy belongs to one rollout: remove it from one of them",
                    c.policy.kind, c.rollout, c.revision
                )
            })
            .collect()
    }

    /// An aborted commit is not staged again; a new commit is, even with the same content.
    fn aborted(&self, rev: &RevisionRef) -> bool {
        self.st.abort.as_ref().is_some_and(|a| a.revision == rev.id && a.commit == rev.commit)
    }

    /// Drops the candidate (if any) and its audit and approval.
    pub(super) fn drop_candidate(&mut self) -> Option<RevisionRef> {
        let candidate = self.st.candidate_revision.take()?;
        self.st.candidate_staged_at = None;
        self.reset_audit();
        if self.st.approval.as_ref().is_some_and(|a| a.revision == candidate.id) {
            self.st.approval = None;
        }
        Some(candidate)
    }

    /// Drops the candidate (if any) with a Superseded outcome.
    fn supersede(&mut self, why: &str) {
        let Some(candidate) = self.drop_candidate() else { return };
        self.record(&candidate, Outcome::Superseded, why.into());
        self.event(EventType::Normal, "Superseded", format!("stopped auditing {}: {why}", candidate.display));
    }

    /// Enforced before and not rolled back since: a revert to it may skip the audit.
    fn known_good(&self, id: &str) -> bool {
        self.st
            .history
            .iter()
            .filter(|h| h.revision == id)
            .find(|h| matches!(h.outcome, Outcome::Promoted | Outcome::FastTracked | Outcome::RolledBack))
            .is_some_and(|h| h.outcome != Outcome::RolledBack)
    }
}

/// The scope rule: outside the controller's namespace, a rollout carries only policies for its
/// own namespace.
pub fn scope_violations(scope: Scope, ctx: &Context, policies: &[PolicyRef]) -> Vec<String> {
    let home = ctx.namespace == ctx.controller_namespace;
    match scope {
        Scope::Cluster if home => vec![],
        Scope::Cluster => vec![format!(
            "spec.scope Cluster is allowed only for rollouts in the controller's namespace {}; this rollout is in {}",
            ctx.controller_namespace, ctx.namespace
        )],
        Scope::Namespace => policies
            .iter()
            .filter_map(|p| match &p.namespace {
                Some(ns) if ns == ctx.namespace => None,
                Some(ns) => Some(format!(
                    "{} {ns}/{} is for namespace {ns}, but a rollout in {} (scope Namespace) may only carry policies for its own namespace",
                    p.kind, p.name, ctx.namespace
                )),
                None => Some(format!(
                    "{} {} is cluster-wide, but a rollout in {} (scope Namespace) may only carry namespaced policies",
                    p.kind, p.name, ctx.namespace
                )),
            })
            .collect(),
    }
}
