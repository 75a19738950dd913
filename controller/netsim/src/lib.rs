//! Local mode's network (issue #6): the pods of a cluster file as network namespaces behind one
//! "node" namespace, echo responders on their declared ports, background traffic from the
//! `palisade.dev/talks-to` annotation, and one-shot probes. Pods may answer HTTP, DNS and Kafka
//! ([`annotations`]), and stand for hosts outside the cluster.
//!
//! [`up`] builds the network and starts a detached responder process that outlives it; [`down`]
//! removes both. Every namespace name starts with a prefix, so a rerun after a crash removes the
//! leftovers first and tests can run beside each other.
use std::convert::Infallible;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub mod annotations;
pub mod dns;
mod error;
pub mod grpc;
pub mod http;
pub mod kafka;
pub mod kube_proxy;
pub mod net;
pub mod probe;
pub mod responders;
pub mod services;
pub mod state;
pub mod tls;
pub mod traffic;

pub use error::{Error, NodeAddressError, Result};
pub use net::{LocalNetwork, LocalNode, PodNet, in_netns, spawn_in_netns};
pub use palisade_policy::trace::IpFamily;
pub use probe::{Outcome, Port, ask_who, probe, probe_from_netns};
pub use responders::Responders;
pub use state::{DEFAULT_PREFIX, DEFAULT_STATE_DIR, Local, StateDir};
pub use traffic::{Counts, Talk, TrafficGenerator, TrafficOptions};

/// Local mode puts addresses in this network only on interfaces (the node's and the pods').
pub const ADDRESS_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 200, 0, 0), 16);
/// Local mode puts IPv6 addresses in this network only on interfaces (a dual-stack pod's
/// second address, the node's IPv6 address).
pub const ADDRESS_RANGE_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0), 64);

/// How long `up` waits for the responder process to bind its ports.
const RESPONDERS_READY: Duration = Duration::from_secs(10);

/// Fails unless running as root, which namespaces and eBPF need.
pub fn require_root() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    Ok(())
}

/// What `up` made.
#[derive(Debug)]
pub struct Up {
    pub local: Local,
    pub responders_pid: u32,
}

/// Replaces whatever `state` describes (and any namespace with `prefix`) with a fresh network for
/// `cluster_file`, records it in `state`, and starts `responders`, a command that runs
/// [`serve_responders`] on `state` (the CLI's hidden `palisade local responders --state DIR`).
/// On failure nothing is left behind.
pub fn up(state: &StateDir, cluster_file: &Path, prefix: &str, responders: Command) -> Result<Up> {
    require_root()?;
    let text =
        std::fs::read_to_string(cluster_file).map_err(|e| Error::io(format!("read {}", cluster_file.display()), e))?;
    let local = Local::parse(cluster_file, &text, prefix)?;
    down(state)?;
    let started = state
        .save(&local, &text)
        .and_then(|()| local.network.create())
        .and_then(|()| kube_proxy::apply(local.network.node_netns(), &local.cluster))
        .and_then(|()| start_responders(state, responders));
    match started {
        Ok(responders_pid) => Ok(Up { local, responders_pid }),
        Err(e) => {
            if let Err(cleanup) = down(state) {
                eprintln!("warning: cleaning up after a failed `up`: {cleanup:#}");
            }
            Err(e)
        }
    }
}

/// Stops the responder process and deletes the namespaces and state that `up` recorded in
/// `state`. Without a record there is nothing of this state's to delete: namespaces with some
/// prefix may belong to another local cluster. Safe to run twice.
pub fn down(state: &StateDir) -> Result<()> {
    require_root()?;
    state.stop_responders()?;
    if let Some(prefix) = state.recorded_prefix()? {
        let node = net::node_netns(&prefix);
        if net::netns_with_prefix(&prefix)?.contains(&node) {
            kube_proxy::remove(&node)?;
        }
        net::remove_netns_with_prefix(&prefix)?;
    }
    state.clear()
}

/// The responder process: serves every declared port of the cluster recorded in `state` until
/// killed. Writes the pid file once every port is bound.
pub fn serve_responders(state: &StateDir) -> Result<Infallible> {
    require_root()?;
    let local = state.load()?;
    let responders = Responders::start(&local.network)?;
    state.write_pid()?;
    eprintln!("serving {} ports in {} pods", responders.served().len(), local.network.pods().count());
    loop {
        std::thread::park();
    }
}

fn start_responders(state: &StateDir, mut command: Command) -> Result<u32> {
    let log_path = state.log_file();
    let log = std::fs::File::create(&log_path).map_err(|e| Error::io(format!("create {}", log_path.display()), e))?;
    // Its own process group: a Ctrl-C in the terminal that ran `up` does not reach it.
    let log_copy = log.try_clone().map_err(|e| Error::io(format!("open {} again", log_path.display()), e))?;
    command.stdin(Stdio::null()).stdout(log_copy).stderr(log).process_group(0);
    let mut child = command.spawn().map_err(|e| Error::io(format!("start the responder process {command:?}"), e))?;
    let pid = child.id();
    let mut exited = None;
    let ready = state::wait_for(RESPONDERS_READY, || {
        exited = child.try_wait().ok().flatten();
        exited.is_none() && state.responders_pid().ok().flatten() == Some(pid)
    });
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let how =
            exited.map_or_else(|| format!("was not ready after {RESPONDERS_READY:?}"), |s| format!("exited ({s})"));
        let log = log.trim_end();
        return Err(Error::Responders(format!("the responder process {how}; its log {}:\n{log}", log_path.display())));
    }
    // Reaps it when it ends while this process lives on (tests, `local run`); a CLI `up` exits
    // first and init adopts it.
    std::thread::spawn(move || child.wait());
    Ok(pid)
}
