use std::{io, path::PathBuf};

use aya::{EbpfError, maps::MapError, pin::PinError, programs::ProgramError};

use crate::{AttachMode, EndpointId, attach::HookError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("map {map}{}: {source}", for_endpoint(*endpoint))]
    Map {
        map: &'static str,
        endpoint: Option<EndpointId>,
        #[source]
        source: MapError,
    },
    #[error("batch update of map {map}: {source}")]
    Batch {
        map: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("program {program}{}: {source}", for_endpoint(*endpoint))]
    Program {
        program: &'static str,
        endpoint: Option<EndpointId>,
        #[source]
        source: ProgramError,
    },
    #[error("{action} {program} on {target}: {source}")]
    Hook {
        action: &'static str,
        program: &'static str,
        /// `interface veth1 (endpoint 3)` or `node interface eth0`.
        target: String,
        #[source]
        source: Box<HookError>,
    },
    #[error(
        "{} holds a datapath attached with {pinned}, not {requested}; remove the directory (that detaches every \
         endpoint) to change the attach mode",
        dir.display()
    )]
    AttachModeMismatch { dir: PathBuf, pinned: AttachMode, requested: AttachMode },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("the eBPF object has no {0}; was it built with PALISADE_BPF_SKIP=1?")]
    MissingInObject(&'static str),
    #[error("pinning {}: {source}", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error("pin directory {}: {source}", path.display())]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("interface {ifname} of endpoint {endpoint}: {source}")]
    Interface {
        ifname: String,
        endpoint: EndpointId,
        #[source]
        source: io::Error,
    },
    #[error("endpoint {endpoint} is already attached to another interface")]
    AlreadyAttached { endpoint: EndpointId },
    #[error("endpoint {endpoint} cannot be the host endpoint: endpoint {host} is")]
    HostEndpointTaken { endpoint: EndpointId, host: EndpointId },
    #[error("endpoint {0} is unknown (not attached)")]
    UnknownEndpoint(EndpointId),
    #[error("endpoint {0} has no candidate slot to promote")]
    NoCandidate(EndpointId),
    #[error("endpoint {endpoint}: {entries} policy entries exceed the slot capacity of {max}")]
    TooManyEntries { endpoint: EndpointId, entries: usize, max: u32 },
    #[error("endpoint {endpoint}: the node already has the maximum of {max} endpoints")]
    TooManyEndpoints { endpoint: EndpointId, max: u32 },
    #[error(
        "{} holds a datapath pinned by another build of Palisade (its eBPF object {pinned}, this build's {expected}); \
         its programs keep enforcing, but their maps may differ, so this build does not adopt them. Run the build that \
         pinned them, or remove the directory (that detaches every endpoint) and start again",
        dir.display()
    )]
    PinnedByAnotherBuild { dir: PathBuf, pinned: String, expected: String },
    #[error("counting CPUs: {0}")]
    Cpus(#[source] io::Error),
}

fn for_endpoint(endpoint: Option<EndpointId>) -> String {
    endpoint.map(|endpoint| format!(" (endpoint {endpoint})")).unwrap_or_default()
}
