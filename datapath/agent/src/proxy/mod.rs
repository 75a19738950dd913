//! The node's transparent L7 proxy. The datapath steers every TCP connection and UDP datagram
//! whose policy entry redirects, in the enforced or the candidate slot, to its sockets (see the
//! eBPF `proxy` module); the proxy judges each HTTP request and each DNS query under both
//! revisions with the policy crate's matcher (the one `palisade trace` uses), answers a denied
//! one itself (`403 Forbidden`, DNS `REFUSED`, a TCP reset for a TLS server name, Kafka
//! `TOPIC_AUTHORIZATION_FAILED`) and forwards an allowed one from the client's own address
//! (`IP_TRANSPARENT`), so the destination's policy and logs see the real peer. The addresses of
//! the DNS answers it lets through are learned for `toFQDNs`.
//!
//! Requests the candidate would judge otherwise are counted ([`L7Diffs`]); what the proxy
//! cannot judge is refused, never passed unjudged.
mod dns;
mod http;
mod judge;
mod kafka;
mod observed;
mod routing;
mod tls;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::{self, JoinHandle};

use k8s_openapi::jiff::Timestamp;
use palisade_common::{Direction, MARK_FROM_PROXY};
use palisade_policy::CompiledPolicy;
use palisade_policy::l7::L7Request;
use palisade_policy::model::Protocol;
use socket2::{Domain, Socket, Type};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::fqdn::DnsAnswer;
use dns::DnsProxy;
use judge::{Ends, Sides, speaks, speaks_dns};
pub use observed::FlowSink;
pub use routing::install_routing;

/// Where the DNS proxy sends the addresses of each answer it lets through. When the datapath
/// does not know them all yet (this answer taught them, or an earlier one whose learning is
/// still being written), it returns what to wait for: only then does the answer go to the
/// client.
pub type Learner = Arc<dyn Fn(DnsAnswer) -> Option<Written> + Send + Sync>;

/// Waits until the datapath has the answers up to a generation of the FQDN cache written.
pub struct Written {
    written: watch::Receiver<u64>,
    generation: u64,
}

impl Written {
    /// `written` carries the newest generation written (or given up on).
    pub fn new(written: watch::Receiver<u64>, generation: u64) -> Written {
        Written { written, generation }
    }

    pub async fn wait(mut self) {
        let generation = self.generation;
        // Closed: the agent stopped, nothing will be written.
        let _ = self.written.wait_for(|&written| written >= generation).await;
    }
}

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

/// What the proxy's connections and queries share.
pub struct ProxyContext {
    pub policy: SharedPolicy,
    /// Where requests the candidate judges otherwise are counted.
    pub diffs: L7Diffs,
    pub learner: Learner,
    /// Where every judged request is published for observers.
    pub flows: FlowSink,
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
    pub protocol: Protocol,
    pub port: u16,
    pub request: RequestKind,
    pub enforced_allows: bool,
    pub candidate_allows: bool,
    /// The rules that decided (`COOKIE_NONE` where none did).
    pub enforced_cookie: u32,
    pub candidate_cookie: u32,
}

/// What a proxied request asked for, as reports group them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestKind {
    Http {
        method: String,
        path: String,
    },
    Dns {
        query: String,
    },
    /// A TLS connection, by the server name of its ClientHello (`None`: none).
    Tls {
        server_name: Option<String>,
    },
    /// A Kafka request, by its API key's name and the topics it names (at most
    /// [`MAX_REPORTED_TOPICS`]).
    Kafka {
        api_key: String,
        topics: Vec<String>,
    },
}

/// The most topics of one Kafka request a report lists: a request may name thousands.
pub const MAX_REPORTED_TOPICS: usize = 16;

/// A topic as reports carry it: at most 255 bytes (Kafka's own limit is 249), whatever a client
/// sent.
fn reported_topic(topic: &str) -> String {
    let mut end = topic.len().min(255);
    while !topic.is_char_boundary(end) {
        end -= 1;
    }
    topic[..end].to_string()
}

impl RequestKind {
    fn of(request: &L7Request) -> RequestKind {
        match request {
            L7Request::Http(http) => RequestKind::Http { method: http.method.clone(), path: http.path.clone() },
            L7Request::Dns(name) => RequestKind::Dns { query: name.clone() },
            L7Request::Tls(name) => RequestKind::Tls { server_name: name.clone() },
            L7Request::Kafka(request) => RequestKind::Kafka {
                api_key: palisade_policy::l7::kafka::api_key_text(request.api_key),
                topics: request.topics.iter().take(MAX_REPORTED_TOPICS).map(|t| reported_topic(t)).collect(),
            },
        }
    }
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

/// The running proxy: its sockets' port, and the thread serving them (stopped on drop).
pub struct Proxy {
    port: u16,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on 127.0.0.1:`port` (0: any free port), TCP and UDP, in the calling thread's
    /// network namespace, as transparent sockets the datapath assigns steered connections and
    /// datagrams to, and serves them on a thread of its own. Upstream connections are made in
    /// the same namespace.
    pub fn start(port: u16, context: ProxyContext) -> std::io::Result<Proxy> {
        let listener = transparent_listener(port)?;
        let port = listener.local_addr()?.port();
        let datagrams = dns::steered_udp_socket(port)?;
        let context = Arc::new(context);
        let dns = Arc::new(DnsProxy::new(context.clone()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("palisade-proxy")
            .enable_all()
            .build()?;
        let (stop, mut stopped) = watch::channel(false);
        let thread = thread::Builder::new().name("palisade-proxy".into()).spawn(move || {
            runtime.block_on(async move {
                let sockets = tokio::net::TcpListener::from_std(listener)
                    .and_then(|l| Ok((l, tokio::net::UdpSocket::from_std(datagrams)?)));
                let (listener, datagrams) = match sockets {
                    Ok(sockets) => sockets,
                    Err(e) => return warn!("L7 proxy: cannot serve its sockets: {e}"),
                };
                tokio::spawn(dns::serve_udp(datagrams, dns.clone()));
                loop {
                    tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((client, _)) => {
                                tokio::spawn(serve_connection(client, context.clone(), dns.clone()));
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

/// Serves a steered TCP connection in the protocol its rules speak: DNS where DNS rules apply
/// to it, TLS (the ClientHello's server name) where `serverNames` rules do, Kafka where Kafka
/// rules do, HTTP otherwise.
async fn serve_connection(client: TcpStream, context: Arc<ProxyContext>, dns: Arc<DnsProxy>) {
    let (Ok(SocketAddr::V4(peer)), Ok(SocketAddr::V4(destination))) = (client.peer_addr(), client.local_addr()) else {
        return;
    };
    let ends = Ends { client: *peer.ip(), destination, protocol: Protocol::TCP };
    let sides = Sides::default();
    let dns_rules = context.policy.current().is_some_and(|p| speaks_dns(&p, &sides.of(&p.enforced, ends), ends));
    let rules = |kind| context.policy.current().is_some_and(|p| speaks(&p, &sides.of(&p.enforced, ends), ends, kind));
    if dns_rules {
        dns::serve_tcp(client, ends, sides, dns).await;
    } else if rules("tls") {
        tls::serve(client, ends, sides, context).await;
    } else if rules("kafka") {
        kafka::serve(client, ends, sides, context).await;
    } else {
        http::serve(client, ends, sides, context).await;
    }
}

/// An upstream TCP connection to the original destination from the client's address.
async fn connect(ends: Ends) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::from_std_stream(upstream_socket(ends, Type::STREAM)?.into());
    let stream = socket.connect(ends.destination.into()).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A socket for the proxy's upstream side, from the client's own address (`IP_TRANSPARENT`)
/// and marked so that the datapath passes it (its requests are judged) and steers its replies
/// back to it.
fn upstream_socket(ends: Ends, kind: Type) -> std::io::Result<Socket> {
    // Non-blocking from the start: two system calls fewer than setting it after.
    let socket = Socket::new(Domain::IPV4, kind.nonblocking(), None)?;
    socket.set_ip_transparent_v4(true)?;
    socket.set_mark(MARK_FROM_PROXY)?;
    socket.bind(&SocketAddr::from((ends.client, 0)).into())?;
    Ok(socket)
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
