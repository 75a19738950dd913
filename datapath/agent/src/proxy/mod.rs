//! The node's transparent L7 proxy. The datapath steers every TCP connection whose policy entry
//! redirects, in the enforced or the candidate slot, to its listener (see the eBPF `proxy`
//! module); the proxy judges each HTTP request on it under both revisions with the policy
//! crate's matcher (the one `palisade trace --http` uses), answers a denied one with
//! `403 Forbidden` and forwards an allowed one over an upstream connection that keeps the
//! client's address (`IP_TRANSPARENT`), so the destination's policy and logs see the real peer.
//!
//! Requests the candidate would judge otherwise are counted ([`L7Diffs`]); L7 protocols the
//! proxy does not speak (Kafka, DNS over TCP) are refused, never passed unjudged.
mod http;
mod routing;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::{self, JoinHandle};

use k8s_openapi::jiff::Timestamp;
use palisade_common::Direction;
use palisade_policy::CompiledPolicy;
use socket2::{Domain, Socket, Type};
use tokio::sync::watch;
use tracing::{info, warn};

pub use routing::install_routing;

/// What the proxy judges by: the node's compiled enforced and candidate sets.
#[derive(Clone)]
pub struct ProxyPolicy {
    pub enforced: Arc<CompiledPolicy>,
    /// `None` when no rollout audits a candidate. Without an enforced policy (audit), the
    /// enforced set allows what the candidate would deny: forwarded, and counted.
    pub candidate: Option<Arc<CompiledPolicy>>,
}

/// The policy the proxy reads, replaced whole by the agent after each convergence that changed
/// it: a connection takes the current one when it opens a request.
#[derive(Clone, Default)]
pub struct SharedPolicy(Arc<RwLock<Option<ProxyPolicy>>>);

impl SharedPolicy {
    pub fn publish(&self, policy: Option<ProxyPolicy>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    pub fn current(&self) -> Option<ProxyPolicy> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One kind of request the candidate judges otherwise than the enforced policy, at one
/// endpoint in one direction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct L7Diff {
    /// The endpoint whose policy judged it.
    pub namespace: String,
    pub pod: String,
    pub direction: Direction,
    /// The other end: its address and identity.
    pub peer: Ipv4Addr,
    pub peer_identity: u32,
    pub port: u16,
    pub method: String,
    pub path: String,
    pub enforced_allows: bool,
    pub candidate_allows: bool,
    /// The rules that decided (`COOKIE_NONE` where none did).
    pub enforced_cookie: u32,
    pub candidate_cookie: u32,
}

/// How many requests of an [`L7Diff`] the proxy saw, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L7Seen {
    pub requests: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
}

/// Requests per [`L7Diff`], shared by the proxy (which counts) and the agent's reports.
#[derive(Clone, Debug, Default)]
pub struct L7Diffs(Arc<Mutex<BTreeMap<L7Diff, L7Seen>>>);

impl L7Diffs {
    pub fn record(&self, diff: L7Diff) {
        let now = Timestamp::now();
        let mut diffs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let seen = diffs.entry(diff).or_insert(L7Seen { requests: 0, first_seen: now, last_seen: now });
        seen.requests += 1;
        seen.last_seen = now;
    }

    pub fn snapshot(&self) -> Vec<(L7Diff, L7Seen)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(d, s)| (d.clone(), *s)).collect()
    }

    /// A new candidate: what the old one would have changed is no evidence about it.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// The running proxy: its listener's port, and the thread serving it (stopped on drop).
pub struct Proxy {
    port: u16,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on 127.0.0.1:`port` (0: any free port) in the calling thread's network
    /// namespace, as a transparent socket the datapath assigns steered connections to, and
    /// serves it on a thread of its own. Upstream connections are made in the same namespace.
    pub fn start(port: u16, policy: SharedPolicy, diffs: L7Diffs) -> std::io::Result<Proxy> {
        let listener = transparent_listener(port)?;
        let port = listener.local_addr()?.port();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("palisade-proxy")
            .enable_all()
            .build()?;
        let (stop, mut stopped) = watch::channel(false);
        let thread = thread::Builder::new().name("palisade-proxy".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => return warn!("L7 proxy: cannot serve its listener: {e}"),
                };
                loop {
                    tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((client, _)) => {
                                let (policy, diffs) = (policy.clone(), diffs.clone());
                                tokio::spawn(http::serve(client, policy, diffs));
                            }
                            Err(e) => warn!("L7 proxy: accept: {e}"),
                        },
                        _ = stopped.changed() => break,
                    }
                }
            });
        })?;
        info!(port, "L7 proxy listening on 127.0.0.1");
        Ok(Proxy { port, stop: Some(stop), thread: Some(thread) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn transparent_listener(port: u16) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    // Accepts connections addressed anywhere: their sockets keep the original destination.
    socket.set_ip_transparent_v4(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
