//! The status conditions (kstatus Ready, Reconciling, Stalled, and the steps of the rollout).
use super::*;

impl<'a> Engine<'a> {
    pub(super) fn set(&mut self, type_: &str, status: bool, reason: &str, message: String) {
        let status = if status { "True" } else { "False" };
        let condition = Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: self.ctx.generation,
            last_transition_time: self.now(),
        };
        match self.st.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(existing) if existing.status == condition.status => {
                Condition { last_transition_time: existing.last_transition_time.clone(), ..condition }
                    .clone_into(existing)
            }
            Some(existing) => *existing = condition,
            None => self.st.conditions.push(condition),
        }
    }

    fn clear(&mut self, type_: &str) {
        self.st.conditions.retain(|c| c.type_ != type_);
    }

    /// kstatus: Ready says whether the newest commit is enforced everywhere; Reconciling and
    /// Stalled are present only while true; the rest tell which step the rollout is at.
    pub(super) fn refresh_conditions(&mut self, source: &SourceObservation) {
        let enforced = self.st.enforced_revision.clone();
        let behind: Vec<&str> = self
            .reports
            .iter()
            .filter(|r| r.enforced_revision.as_deref() != enforced.as_ref().map(|e| e.id.as_str()))
            .map(|r| r.node.as_str())
            .collect();
        let enforcing = self.reports.len() - behind.len();
        let everywhere = !self.reports.is_empty() && behind.is_empty();
        if self.st.phase == Phase::Enforced && !behind.is_empty() {
            let now = self.now();
            self.st.nodes_behind_since.get_or_insert(now);
            let message = format!(
                "{enforcing} of {} nodes enforce {} (waiting for {})",
                self.reports.len(),
                self.enforced_display(),
                list(&behind)
            );
            self.waiting = Some(("WaitingForNodes", message));
        } else {
            self.st.nodes_behind_since = None;
        }
        let still = format!("still enforcing {}", self.enforced_display());
        let waiting = self.waiting.clone();
        let (ready, reason, message): (bool, String, String) = match self.st.phase {
            Phase::Pending => {
                (false, "Pending".into(), format!("waiting for the first revision from {}", self.spec.source.url))
            }
            Phase::Auditing | Phase::Inconclusive | Phase::Promoting => {
                let (reason, message) = waiting.clone().unwrap_or(("Progressing", String::new()));
                (false, reason.into(), message)
            }
            Phase::Blocked => {
                let (reason, message) = waiting.clone().unwrap_or(("NewDeniesAboveLimit", String::new()));
                (false, reason.into(), format!("{message}; {still}"))
            }
            Phase::Enforced if everywhere => {
                (true, "Enforced".into(), format!("{} is enforced on all {} nodes", self.enforced_display(), enforcing))
            }
            Phase::Enforced => {
                let message =
                    format!("{enforcing} of {} nodes enforce {}", self.reports.len(), self.enforced_display());
                let (reason, message) = waiting.clone().unwrap_or(("WaitingForNodes", message));
                (false, reason.into(), message)
            }
            Phase::Failed => {
                let attempt = self.st.last_attempted_revision.as_ref();
                let reason = attempt.and_then(|a| a.reason.as_deref()).unwrap_or("Failed").to_string();
                let errors = attempt.map(|a| format!("{}: {}", a.display, a.errors.join("; "))).unwrap_or_default();
                (false, reason, format!("{errors}; fix it and push a new commit; {still}"))
            }
            Phase::RolledBack => {
                let last = self
                    .st
                    .history
                    .iter()
                    .find(|h| h.outcome == Outcome::RolledBack)
                    .map_or(String::new(), |h| h.display.clone());
                (
                    false,
                    "RolledBack".into(),
                    format!("{last} was rolled back and will not be promoted again; push a new commit; {still}"),
                )
            }
        };
        let (ready, reason, message) = match source {
            SourceObservation::Unreachable { message: error }
                if matches!(self.st.phase, Phase::Enforced | Phase::Pending) =>
            {
                (false, "GitOperationFailed".into(), format!("{error}; {still}"))
            }
            SourceObservation::Refused { reason, message: error } => {
                (false, (*reason).into(), format!("{error}; {still}"))
            }
            _ => (ready, reason, message),
        };
        let was = self.st.conditions.iter().find(|c| c.type_ == COND_READY).map(|c| c.reason.clone());
        let source_failure = match source {
            SourceObservation::Refused { reason, .. } => Some(*reason),
            _ => Some("GitOperationFailed").filter(|failed| reason == *failed),
        };
        if let Some(failure) = source_failure.filter(|failure| was.as_deref() != Some(*failure)) {
            self.event(EventType::Warning, failure, message.clone());
        }
        self.set(COND_READY, ready, &reason, message.clone());

        let stalled = matches!(self.st.phase, Phase::Blocked | Phase::Failed | Phase::RolledBack)
            || matches!(source, SourceObservation::Refused { .. });
        if let Some(overdue) = self.deadline_exceeded() {
            let stalled_before = self.st.conditions.iter().find(|c| c.type_ == COND_STALLED);
            if stalled_before.is_none_or(|c| c.reason != "ProgressDeadlineExceeded") {
                self.event(EventType::Warning, "ProgressDeadlineExceeded", overdue.clone());
            }
            self.set(COND_STALLED, true, "ProgressDeadlineExceeded", overdue);
            self.clear(COND_RECONCILING);
        } else if stalled {
            self.set(COND_STALLED, true, &reason, message.clone());
            self.clear(COND_RECONCILING);
        } else if !ready {
            self.set(COND_RECONCILING, true, &reason, message.clone());
            self.clear(COND_STALLED);
        } else {
            self.clear(COND_RECONCILING);
            self.clear(COND_STALLED);
        }

        if self.left_out.is_empty() {
            self.clear(COND_NODES_LEFT_OUT);
        } else {
            let message = format!(
                "{} nodes left out of the promotion barrier until they are back: {}",
                self.left_out.len(),
                list(&self.left_out)
            );
            self.set(COND_NODES_LEFT_OUT, true, "NodesUnavailable", message);
        }

        if self.spec.source.verify.is_none() {
            self.clear(COND_SOURCE_VERIFIED);
        } else {
            match source {
                SourceObservation::Revision(rev) if rev.verified => {
                    self.set(COND_SOURCE_VERIFIED, true, "Succeeded", format!("verified signature of {}", rev.display))
                }
                SourceObservation::Revision(rev) => self.set(
                    COND_SOURCE_VERIFIED,
                    false,
                    "VerificationFailed",
                    format!("{} is not signed by a trusted key", rev.display),
                ),
                SourceObservation::Unverified { display, reason, .. } => {
                    self.set(COND_SOURCE_VERIFIED, false, "VerificationFailed", format!("{display}: {reason}"))
                }
                SourceObservation::Invalid { .. }
                | SourceObservation::Unreachable { .. }
                | SourceObservation::Refused { .. }
                | SourceObservation::Rejected { .. } => {}
            }
        }

        if matches!(self.st.phase, Phase::Auditing | Phase::Inconclusive | Phase::Blocked) {
            let (reason, message) = waiting.clone().unwrap_or(("AuditInProgress", String::new()));
            self.set(COND_AUDITING, true, reason, message);
        } else {
            self.clear(COND_AUDITING);
        }
        match waiting {
            Some((
                reason @ ("NewDeniesAboveLimit" | "ControlPlaneDenied" | "InsufficientTraffic" | "AwaitingApproval"),
                message,
            )) => self.set(COND_PROMOTION_BLOCKED, true, reason, message),
            _ => self.clear(COND_PROMOTION_BLOCKED),
        }

        match (self.st.phase, &enforced) {
            (Phase::Promoting, _) if self.flipping() => {
                self.set(COND_PROMOTED, false, "Flipping", format!("nodes are flipping to {}", self.enforced_display()))
            }
            (Phase::RolledBack, _) => self.set(COND_PROMOTED, false, "RolledBack", message.clone()),
            (_, Some(e)) => {
                let message = format!("{} is the promoted revision", e.display);
                self.set(COND_PROMOTED, true, "Promoted", message)
            }
            (_, None) => self.clear(COND_PROMOTED),
        }
        if self.st.phase == Phase::RolledBack {
            let why = self.st.history.iter().find(|h| h.outcome == Outcome::RolledBack).map(|h| h.message.clone());
            self.set(COND_ROLLED_BACK, true, "DropSpike", why.unwrap_or(message));
        } else {
            self.clear(COND_ROLLED_BACK);
        }
    }
}
