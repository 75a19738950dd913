//! How a policy set is compiled: enforcement mode, the node, allow-localhost, the identity basis.
use super::IdentityBasis;

/// Cilium's `policyEnforcementMode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EnforcementMode {
    #[default]
    Default,
    Always,
    Never,
}

/// Cilium's `allow-localhost`: whether the local host reaches its pods whatever their policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AllowLocalhost {
    /// Ingress from `host` is always allowed (kubelet probes), as Cilium does by default.
    #[default]
    Always,
    /// Traffic from the local host is subject to policy like any other (`fromEntities: [host]`
    /// allows it).
    Policy,
}

impl AllowLocalhost {
    pub const VALUES: [&str; 2] = ["always", "policy"];

    pub fn as_str(self) -> &'static str {
        match self {
            AllowLocalhost::Always => "always",
            AllowLocalhost::Policy => "policy",
        }
    }
}

impl std::str::FromStr for AllowLocalhost {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "always" => Ok(AllowLocalhost::Always),
            "policy" => Ok(AllowLocalhost::Policy),
            _ => Err(format!("{text:?} is not always or policy")),
        }
    }
}

impl std::fmt::Display for AllowLocalhost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a policy set is compiled, beyond its policies and cluster.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    pub mode: EnforcementMode,
    /// Compile only the endpoints on this node (an agent); every endpoint when unset. The
    /// ipcache still covers every pod. The node's own addresses are `host` in the ipcache.
    pub node: Option<String>,
    /// The node whose datapath this compilation describes when that is not [`Self::node`]: its
    /// addresses are `host`, while every endpoint is compiled. Local mode sets it (every pod
    /// runs on its one node), as does `palisade trace --node`. With neither set, every node's
    /// addresses are `remote-node`.
    pub host_node: Option<String>,
    pub allow_localhost: AllowLocalhost,
    /// Prefixes and ipBlocks of other policy sets that get identities too, so that compilations
    /// with the same basis (an enforced and a candidate revision) number identities alike and
    /// share one ipcache.
    pub identity_basis: IdentityBasis,
}
