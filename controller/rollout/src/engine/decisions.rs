//! People's decisions (PolicyDecisions): Promote approves the candidate of a Manual rollout,
//! Abort drops it, Reaudit discards its evidence. Each is read once and consumed; one naming
//! another revision than the candidate is ignored, and the `Decided` condition says why.
use super::*;

impl<'a> Engine<'a> {
    pub(super) fn decide(&mut self, decisions: &[DecisionRequest]) {
        for decision in decisions {
            self.actions.push(Action::ConsumeDecision(decision.name.clone()));
            match self.refusal(decision) {
                Some(why) => {
                    let message = format!(
                        "{} decision {} by {} ignored: {why}",
                        action_name(decision.action),
                        decision.name,
                        decision.user
                    );
                    self.event(EventType::Warning, "DecisionIgnored", message.clone());
                    self.set(COND_DECIDED, false, "Ignored", message);
                }
                None => self.apply(decision),
            }
        }
    }

    /// Why a decision cannot apply to the rollout as it is now, if it cannot.
    fn refusal(&self, decision: &DecisionRequest) -> Option<String> {
        let Some(candidate) = &self.st.candidate_revision else {
            return Some(format!("there is no candidate (it names {})", decision.revision));
        };
        if candidate.id != decision.revision {
            return Some(format!(
                "it names revision {}, but the candidate is {} ({})",
                decision.revision, candidate.display, candidate.id
            ));
        }
        if self.flipping() {
            return Some(format!("nodes are already flipping to {}; revert the commit instead", candidate.display));
        }
        None
    }

    fn apply(&mut self, decision: &DecisionRequest) {
        let Some(candidate) = self.st.candidate_revision.clone() else { return };
        let user = decision.user.as_str();
        let message = match decision.action {
            DecisionAction::Promote => {
                self.st.approval = Some(Approval {
                    revision: candidate.id.clone(),
                    approved_by: user.into(),
                    approved_at: self.now(),
                });
                let message = format!("{} approved by {user}; it is promoted once its audit passes", candidate.display);
                self.record_by(&candidate, Outcome::Approved, message.clone(), Some(user));
                self.event(EventType::Normal, "Approved", message.clone());
                message
            }
            DecisionAction::Abort => {
                self.st.abort = Some(Abort {
                    revision: candidate.id.clone(),
                    commit: candidate.commit.clone(),
                    aborted_by: user.into(),
                    aborted_at: self.now(),
                });
                self.drop_candidate();
                let message =
                    format!("{} aborted by {user}; {} stays enforced", candidate.display, self.enforced_display());
                self.record_by(&candidate, Outcome::Aborted, message.clone(), Some(user));
                self.event(EventType::Normal, "Aborted", message.clone());
                self.st.phase = if self.st.enforced_revision.is_some() { Phase::Enforced } else { Phase::Pending };
                message
            }
            DecisionAction::Reaudit => {
                self.restart_audit(format!("reaudit requested by {user}"), Some(user));
                format!("{} is audited again from now, as {user} asked", candidate.display)
            }
        };
        self.set(COND_DECIDED, true, "Applied", message);
    }
}

fn action_name(action: DecisionAction) -> &'static str {
    match action {
        DecisionAction::Promote => "Promote",
        DecisionAction::Abort => "Abort",
        DecisionAction::Reaudit => "Reaudit",
    }
}
