//! The DNS side of the proxy: queries to a port with `rules.dns`, over UDP and TCP. A query
//! whose name no rule matches is answered `REFUSED` (as Cilium's proxy does by default); an
//! allowed one goes to the server the client addressed, from the client's own address, and
//! its answer's addresses are learned for `toFQDNs` before the client sees the answer, so
//! the client's first connection to them is judged with them known.
use std::collections::HashMap;
use std::io;
use std::mem::{size_of, size_of_val};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RData;
use palisade_policy::l7::L7Request;
use palisade_policy::model::Protocol;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::judge::{Ends, Found, Judged, Sides, judge};
use super::observed::Answered;
use super::{ProxyContext, ProxyPolicy, upstream_socket};
use crate::fqdn::DnsAnswer;
use crate::observe::{DnsFlow, L7Flow};

/// How long the proxy waits for the server it forwards a query to.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer waits for the agent to write its addresses to the datapath. Past it the
/// answer goes anyway: a connection to an address not yet known is dropped, never passed.
const LEARN_TIMEOUT: Duration = Duration::from_secs(2);
/// UDP clients whose policed ends are kept; past it the cache starts over.
const UDP_CLIENTS: usize = 4096;
/// Servers whose answering sockets are kept; past it the cache starts over.
const ANSWERING_SOCKETS: usize = 1024;

/// What the DNS proxy needs, shared by its UDP socket and its TCP connections.
pub(super) struct DnsProxy {
    context: Arc<ProxyContext>,
    /// The policed ends of recent UDP clients (TCP connections keep their own).
    udp_sides: Mutex<HashMap<Ends, Arc<Sides>>>,
    /// A socket bound to each recent server's address, which the answers to its UDP clients are
    /// sent from (one opened for each answer cost about a third of the proxy's time).
    answering: Mutex<HashMap<SocketAddrV4, Arc<std::net::UdpSocket>>>,
}

/// A judged query, for observers once it is answered.
struct Seen {
    policy: ProxyPolicy,
    found: Arc<Found>,
    judged: Judged,
    query: String,
    started: Instant,
}

/// What becomes of a query.
enum Decision {
    /// Answered here (`REFUSED`).
    Answer(Vec<u8>),
    Forward,
}

impl DnsProxy {
    pub fn new(context: Arc<ProxyContext>) -> DnsProxy {
        DnsProxy { context, udp_sides: Mutex::default(), answering: Mutex::default() }
    }

    /// Judges a query between `ends`; `None` for what is not a DNS query (dropped). What is
    /// judged is seen by observers once answered ([`Self::answered`]).
    fn decide(&self, query: &[u8], ends: Ends, sides: &Sides) -> Option<(Decision, Option<Seen>)> {
        let started = Instant::now();
        let message = Message::from_vec(query).ok()?;
        if message.metadata.message_type != MessageType::Query {
            return None;
        }
        // Without a policy (the agent has not converged yet) nothing can be judged: refused.
        let Some(policy) = self.context.policy.current() else {
            return Some((Decision::Answer(refused(&message)?), None));
        };
        // One question per query, as every resolver sends: anything else is not judged.
        let [question] = message.queries.as_slice() else {
            return Some((Decision::Answer(refused(&message)?), None));
        };
        let query = question.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
        let request = L7Request::Dns(query.clone());
        let found = sides.of(&policy.enforced, ends);
        let judged = judge(&policy, &found, ends, &request, &self.context.diffs);
        let decision = match judged.denial() {
            None => Decision::Forward,
            Some(denied) => {
                info!(client = %ends.client, server = %ends.destination, reason = %denied.reason, "DNS query refused");
                Decision::Answer(refused(&message)?)
            }
        };
        Some((decision, Some(Seen { policy, found, judged, query, started })))
    }

    /// Tells observers how a judged query was answered.
    fn answered(&self, ends: Ends, seen: Option<Seen>, reply: Option<&Reply>) {
        let Some(Seen { policy, found, judged, query, started }) = seen else { return };
        let rcode = reply.map_or("SERVFAIL".into(), |r| format!("{:?}", r.rcode).to_ascii_uppercase());
        let answers = reply.iter().flat_map(|r| &r.answer.addresses).map(|&(address, _)| address).collect();
        let answered = Answered { policy: &policy, found: &found, ends, judged: &judged, started };
        let dns = DnsFlow { query, rcode, answers };
        self.context
            .flows
            .publish(answered, L7Flow { latency_ns: 0, http: None, dns: Some(dns), tls: None, kafka: None });
    }

    /// Learns the addresses of an allowed answer, returning once the datapath knows them (or
    /// [`LEARN_TIMEOUT`] passed).
    async fn learn(&self, reply: Option<&Reply>) {
        let learnable = reply.filter(|r| r.rcode == ResponseCode::NoError && !r.answer.addresses.is_empty());
        let Some(written) = learnable.and_then(|r| (self.context.learner)(r.answer.clone())) else { return };
        if timeout(LEARN_TIMEOUT, written.wait()).await.is_err() {
            warn!("DNS proxy: the agent did not write the learned addresses in time; answering anyway");
        }
    }

    /// Sends an answer to a UDP client from the address and port it asked: resolvers take
    /// answers only from where they asked.
    fn answer_udp(&self, server: SocketAddrV4, client: SocketAddrV4, response: &[u8]) -> io::Result<()> {
        let cached = self.answering.lock().unwrap_or_else(|p| p.into_inner()).get(&server).cloned();
        let socket = match cached {
            Some(socket) => socket,
            None => match answering_socket(server)? {
                Answering::Kept(socket) => {
                    let socket = Arc::new(socket);
                    let mut sockets = self.answering.lock().unwrap_or_else(|p| p.into_inner());
                    if sockets.len() >= ANSWERING_SOCKETS {
                        sockets.clear();
                    }
                    sockets.insert(server, socket.clone());
                    socket
                }
                Answering::Once(socket) => return socket.send_to(response, client).map(drop),
            },
        };
        let sent = socket.send_to(response, client);
        if sent.is_err() {
            // Opened afresh for the next answer.
            self.answering.lock().unwrap_or_else(|p| p.into_inner()).remove(&server);
        }
        sent.map(drop)
    }

    fn udp_sides(&self, ends: Ends) -> Arc<Sides> {
        let mut cache = self.udp_sides.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= UDP_CLIENTS && !cache.contains_key(&ends) {
            cache.clear();
        }
        cache.entry(ends).or_default().clone()
    }
}

/// An answer, read once for learning and for observers: its rcode, and the names and A
/// addresses it gives.
struct Reply {
    rcode: ResponseCode,
    answer: DnsAnswer,
}

/// `None` for what does not parse as a DNS message.
fn reply_of(response: &[u8]) -> Option<Reply> {
    let message = Message::from_vec(response).ok()?;
    let normal = |name: &hickory_proto::rr::Name| name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    let mut answer = DnsAnswer::default();
    answer.names.extend(message.queries.iter().map(|q| normal(q.name())));
    for record in &message.answers {
        answer.names.push(normal(&record.name));
        match &record.data {
            RData::A(a) => answer.addresses.push((a.0, record.ttl)),
            RData::CNAME(target) => answer.names.push(normal(&target.0)),
            _ => {}
        }
    }
    answer.names.sort_unstable();
    answer.names.dedup();
    Some(Reply { rcode: message.metadata.response_code, answer })
}

fn refused(query: &Message) -> Option<Vec<u8>> {
    let mut response = Message::error_msg(query.metadata.id, query.metadata.op_code, ResponseCode::Refused);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.add_queries(query.queries.iter().cloned());
    response.to_vec().ok()
}

/// Serves the proxy's UDP socket: each steered datagram is one query, answered from the
/// address the client sent it to.
pub(super) async fn serve_udp(socket: UdpSocket, proxy: Arc<DnsProxy>) {
    let mut buf = vec![0; 65535];
    loop {
        let received = socket.async_io(Interest::READABLE, || recv_steered(socket.as_raw_fd(), &mut buf)).await;
        let (len, client, destination) = match received {
            Ok(received) => received,
            Err(e) => {
                warn!("DNS proxy: receive: {e}");
                continue;
            }
        };
        let query = buf[..len].to_vec();
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let ends = Ends { client: *client.ip(), destination, protocol: Protocol::UDP };
            let Some((decision, seen)) = proxy.decide(&query, ends, &proxy.udp_sides(ends)) else { return };
            let response = match decision {
                Decision::Answer(response) => response,
                Decision::Forward => match forward_udp(&query, ends).await {
                    Ok(response) => response,
                    Err(e) => return debug!(client = %client, server = %destination, "DNS proxy upstream: {e}"),
                },
            };
            let reply = reply_of(&response);
            proxy.learn(reply.as_ref()).await;
            if let Err(e) = proxy.answer_udp(destination, client, &response) {
                debug!(client = %client, server = %destination, "DNS proxy: answer: {e}");
            }
            proxy.answered(ends, seen, reply.as_ref());
        });
    }
}

/// Serves one steered TCP connection to a DNS port: length-prefixed queries, one at a time,
/// over one upstream connection.
pub(super) async fn serve_tcp(mut client: TcpStream, ends: Ends, sides: Sides, proxy: Arc<DnsProxy>) {
    let mut upstream: Option<TcpStream> = None;
    loop {
        let Ok(query) = read_message(&mut client).await else { return };
        let Some((decision, seen)) = proxy.decide(&query, ends, &sides) else { return };
        let response = match decision {
            Decision::Answer(response) => response,
            Decision::Forward => {
                let exchanged = async {
                    let server = match &mut upstream {
                        Some(server) => server,
                        None => {
                            let socket = TcpSocket::from_std_stream(upstream_socket(ends, Type::STREAM)?.into());
                            upstream.insert(socket.connect(ends.destination.into()).await?)
                        }
                    };
                    write_message(server, &query).await?;
                    read_message(server).await
                };
                match timeout(UPSTREAM_TIMEOUT, exchanged).await {
                    Ok(Ok(response)) => response,
                    _ => return debug!(client = %ends.client, server = %ends.destination, "DNS proxy upstream failed"),
                }
            }
        };
        let reply = reply_of(&response);
        proxy.learn(reply.as_ref()).await;
        if write_message(&mut client, &response).await.is_err() {
            return;
        }
        proxy.answered(ends, seen, reply.as_ref());
    }
}

async fn read_message(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut message = vec![0; len.into()];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

async fn write_message(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| io::Error::other("DNS message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// Asks the server the client addressed, from the client's address.
async fn forward_udp(query: &[u8], ends: Ends) -> io::Result<Vec<u8>> {
    let socket = UdpSocket::from_std(upstream_socket(ends, Type::DGRAM)?.into())?;
    socket.connect(ends.destination).await?;
    socket.send(query).await?;
    // Filled without being zeroed first (a DNS message over UDP may be up to 64 KiB long).
    let mut response = Vec::with_capacity(65535);
    timeout(UPSTREAM_TIMEOUT, socket.recv_buf(&mut response)).await.map_err(io::Error::other)??;
    Ok(response)
}

/// A socket that sends from a server's address and port.
enum Answering {
    /// Bound to an address elsewhere (a pod's, a remote host's), which no socket of the node's
    /// can have but a transparent one: kept for the next answers. It receives nothing: the
    /// datagrams the datapath steers to the proxy are assigned to the proxy's own socket.
    Kept(std::net::UdpSocket),
    /// Bound to an address of the node's own (a host-network server's), beside the server's
    /// socket: kept, it could take the server's queries. For one answer only.
    Once(std::net::UdpSocket),
}

fn answering_socket(server: SocketAddrV4) -> io::Result<Answering> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    // Without IP_TRANSPARENT only the node's own addresses can be bound.
    match socket.bind(&SocketAddr::V4(server).into()) {
        Ok(()) => return Ok(Answering::Once(socket.into())),
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
        Err(e) => return Err(e),
    }
    socket.set_ip_transparent_v4(true)?;
    socket.bind(&SocketAddr::V4(server).into())?;
    Ok(Answering::Kept(socket.into()))
}

/// Receives one datagram the datapath assigned to the proxy's socket: its length, its sender
/// and the address it was sent to (`IP_ORIGDSTADDR`).
fn recv_steered(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddrV4, SocketAddrV4)> {
    // SAFETY: plain C structs, zeroed; recvmsg writes at most the lengths given, into buffers
    // that outlive the call; the control messages are read within the length it returned.
    unsafe {
        let mut from: libc::sockaddr_in = std::mem::zeroed();
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut control = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&raw mut from).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        let len = libc::recvmsg(fd, &mut msg, 0);
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_IP && (*cmsg).cmsg_type == libc::IP_ORIGDSTADDR {
                let destination = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::sockaddr_in>());
                return Ok((len as usize, v4(&from), v4(&destination)));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Err(io::Error::other("a datagram without its original destination"))
    }
}

fn v4(address: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)), u16::from_be(address.sin_port))
}

/// The proxy's UDP socket on 127.0.0.1:`port`: transparent, so the datapath can assign it
/// datagrams addressed anywhere, and told each one's original destination.
pub(super) fn steered_udp_socket(port: u16) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    socket.set_ip_transparent_v4(true)?;
    socket.set_reuse_address(true)?;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and an int option of its size.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_IP,
            libc::IP_RECVORIGDSTADDR,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).into())?;
    Ok(socket.into())
}
