//! What can go wrong building, running or tearing down the local network.
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitStatus;

use crate::net::address_range;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("local mode needs root: network namespaces and eBPF")]
    NotRoot,
    /// The cluster file cannot be run as a local network; the message names the file, and the
    /// line and field where there is one.
    #[error("{0}")]
    Cluster(String),
    #[error(transparent)]
    NodeAddress(#[from] NodeAddressError),
    /// `palisade local up` has not run with this state directory.
    #[error("{}: no local cluster is up here (run `palisade local up` first)", .0.display())]
    NotUp(PathBuf),
    /// A file, socket, thread or namespace could not be used; `action` says what was tried.
    #[error("{action}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
    /// A state file that is not what `up` writes.
    #[error("{}: {problem}", path.display())]
    State { path: PathBuf, problem: String },
    /// An `ip` command failed (`ip netns exec` included: an nft script in a namespace).
    #[error("{action}: {command} failed ({status}): {stderr}")]
    Ip { action: String, command: String, status: ExitStatus, stderr: String },
    #[error("network namespaces {} are still there after deleting them", .0.join(", "))]
    NamespacesLeft(Vec<String>),
    /// The responder process did not come up, or does not go away.
    #[error("{0}")]
    Responders(String),
}

impl Error {
    /// An I/O error with what was being done.
    pub(crate) fn io(action: impl Into<String>, source: io::Error) -> Error {
        Error::Io { action: action.into(), source }
    }
}

/// Why a cluster file's node address cannot be the node namespace's.
#[derive(Debug, thiserror::Error)]
pub enum NodeAddressError {
    #[error(
        "Node {node}: its InternalIP {address} is outside {}: local mode puts addresses only from that range on interfaces",
        address_range(*address)
    )]
    OutsideRange { node: String, address: IpAddr },
}
