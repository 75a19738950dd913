//! Promotion and rollback: the flip once every node holds the candidate, the barrier until every
//! node confirms, and the post-promotion watch that rolls back on a drop spike.
use super::*;

impl<'a> Engine<'a> {
    fn drops_per_minute(&self) -> u64 {
        self.reports.iter().map(|r| r.totals.drops_per_minute).sum()
    }

    /// The post-promotion watch: a drop spike over the baseline inside the window rolls back.
    pub(super) fn watch_drops(&mut self) {
        let (Some(promoted_at), Some(baseline), Some(previous)) =
            (&self.st.promoted_at, self.st.baseline_drops_per_minute, &self.st.previous_revision)
        else {
            return;
        };
        let window = signed(self.spec.rollback.post_promotion_window.into());
        let remaining = promoted_at.0.duration_until(self.ctx.now).checked_neg().and_then(|d| d.checked_add(window));
        let Some(remaining) = remaining.filter(|r| r.is_positive()) else { return };
        let current = self.drops_per_minute();
        let limit = self.spec.rollback.max_drop_increase;
        if current > baseline.saturating_add(limit) {
            let previous = previous.clone();
            let reason = format!(
                "drops rose from {baseline}/min before the promotion to {current}/min, more than spec.rollback.maxDropIncrease ({limit}/min)"
            );
            self.roll_back(previous, reason);
        } else {
            self.actions.push(Action::RequeueAfter(remaining.unsigned_abs()));
        }
    }

    fn roll_back(&mut self, to: RevisionRef, reason: String) {
        let Some(from) = self.st.enforced_revision.replace(to.clone()) else { return };
        self.st.candidate_staged_at = None;
        if let Some(candidate) = self.st.candidate_revision.take() {
            self.record(&candidate, Outcome::Superseded, format!("cancelled: {} was rolled back", from.display));
        }
        self.record(&from, Outcome::RolledBack, reason.clone());
        let rolled_back = RolledBackRevision { id: from.id.clone(), commit: from.commit.clone() };
        if !self.st.rolled_back_revisions.contains(&rolled_back) {
            self.st.rolled_back_revisions.push(rolled_back);
        }
        self.st.previous_revision = None;
        self.st.promoted_at = None;
        self.st.baseline_drops_per_minute = None;
        self.st.flip_requested_at = Some(self.now());
        self.st.approval = None;
        self.reset_audit();
        self.st.phase = Phase::RolledBack;
        let message = format!("rolled back {} to {}: {reason}", from.display, to.display);
        self.event(EventType::Warning, "RolledBack", message);
        self.actions.push(Action::RollBack { from, to, reason });
    }

    /// Asks every node to enforce the candidate. Only called with every node holding it loaded.
    pub(super) fn flip(&mut self, candidate: RevisionRef, fast_track: bool) {
        self.st.previous_revision = self.st.enforced_revision.replace(candidate.clone());
        self.st.flip_requested_at = Some(self.now());
        self.st.promoted_at = None;
        self.st.baseline_drops_per_minute = Some(self.drops_per_minute());
        self.st.phase = Phase::Promoting;
        let message = format!(
            "all {} nodes loaded {}; flipping from {}",
            self.reports.len(),
            candidate.display,
            self.st.previous_revision.as_ref().map_or("nothing", |p| p.display.as_str())
        );
        self.event(EventType::Normal, "Promoting", message);
        self.actions.push(Action::Flip { to: candidate.clone(), fast_track });
        // Confirmations are settled by the next reconcile, first thing.
        self.flip_pending(&candidate);
    }

    /// Whether some node has yet to confirm the flip to `candidate`; says which in `waiting`.
    fn flip_pending(&mut self, candidate: &RevisionRef) -> bool {
        let pending: Vec<&str> = self
            .reports
            .iter()
            .filter(|r| r.enforced_revision.as_deref() != Some(candidate.id.as_str()))
            .map(|r| r.node.as_str())
            .collect();
        if !self.reports.is_empty() && pending.is_empty() {
            return false;
        }
        self.waiting_for_nodes = true;
        let waiting = if self.reports.is_empty() { "every node".to_string() } else { list(&pending) };
        let message = format!(
            "{} of {} nodes enforce {} (waiting for {waiting})",
            self.reports.len() - pending.len(),
            self.reports.len(),
            candidate.display
        );
        self.waiting = Some(("Flipping", message));
        true
    }

    pub(super) fn promote(&mut self) {
        let Some(candidate) = self.st.candidate_revision.clone() else { return };
        if !self.flipping() {
            // A fast-tracked revert: the barrier is all that stands before the flip.
            let missing = self.nodes_without(&candidate.id);
            if self.reports.is_empty() || !missing.is_empty() {
                self.waiting_for_nodes = true;
                let waiting = if self.reports.is_empty() { "every node".to_string() } else { list(&missing) };
                self.waiting =
                    Some(("WaitingForNodes", format!("waiting for {waiting} to load {}", candidate.display)));
                return;
            }
            return self.flip(candidate, true);
        }
        if self.flip_pending(&candidate) {
            return;
        }
        let fast_track = self.st.audit_started_at.is_none();
        let outcome = if fast_track { Outcome::FastTracked } else { Outcome::Promoted };
        let message = format!("enforced on all {} nodes", self.reports.len());
        self.record(&candidate, outcome, message.clone());
        self.st.candidate_revision = None;
        self.st.candidate_staged_at = None;
        self.st.promoted_at = Some(self.now());
        self.st.flip_requested_at = None;
        self.st.approval = None;
        self.reset_audit();
        self.st.phase = Phase::Enforced;
        self.event(EventType::Normal, "Promoted", format!("{} {message}", candidate.display));
    }
}
