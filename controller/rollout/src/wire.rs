//! The names the controller, the agent and the CLI write and read on the API server's objects,
//! defined once: labels, annotations, field managers and the finalizer.

/// The custom resources' API group and version (`apiVersion: palisade.dev/v1alpha1`).
pub const API_VERSION: &str = "palisade.dev/v1alpha1";

/// On PolicyRevisions (set by the controller) and PolicyAuditReports (set by the agent): the name
/// of the rollout they belong to.
pub const ROLLOUT_LABEL: &str = "palisade.dev/rollout";
/// On PolicyAuditReports: the node whose agent wrote it.
pub const NODE_LABEL: &str = "palisade.dev/node";
/// On PolicyRollouts: setting it to a new value asks for a sync now, like Flux's
/// `reconcile.fluxcd.io/requestedAt`.
pub const RECONCILE_ANNOTATION: &str = "reconcile.palisade.dev/requestedAt";
/// The controller's finalizer on PolicyRollouts: their agents' reports go before they do.
pub const FINALIZER: &str = "palisade.dev/cleanup";

/// The field manager of the controller's writes (and the Events' reporting component):
/// server-side apply keeps apart what it owns from what others own, like an `approval`.
pub const CONTROLLER_FIELD_MANAGER: &str = "palisade-controller";
/// The field manager of the agent's PolicyAuditReports.
pub const AGENT_FIELD_MANAGER: &str = "palisade-agent";
/// The field manager of `palisade suspend`, `resume` and `reconcile`.
pub const CLI_FIELD_MANAGER: &str = "palisade";

#[cfg(test)]
mod tests {
    use kube::Resource;

    use super::*;
    use crate::crd::{PolicyAuditReport, PolicyRevision, PolicyRollout};

    #[test]
    fn the_api_version_is_the_crds() {
        assert_eq!(API_VERSION, PolicyRollout::api_version(&()));
        assert_eq!(API_VERSION, PolicyRevision::api_version(&()));
        assert_eq!(API_VERSION, PolicyAuditReport::api_version(&()));
    }
}
