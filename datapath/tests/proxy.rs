//! Steering to the L7 proxy on real packets: a redirected connection reaches a transparent
//! listener in the node namespace with its original addresses, in both directions; the
//! proxy's upstream connection keeps the client's address and its replies come back to it,
//! also when it reuses the addresses of a pod's earlier flow (and a pod's, when it reuses
//! those of an earlier upstream socket), and from a host off the node; without a proxy (or
//! with nothing listening on its port), a redirect fails closed; a TCP connection keeps to the
//! proxy as it opened, across flips.
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use palisade_common::*;
use palisade_datapath::{Datapath, Slot};
use socket2::{Domain, Socket, Type};
use support::*;

const PROXY_PORT: u16 = 15001;
const WEB_PORT: u16 = 80;

fn identity(endpoint: usize) -> u32 {
    IDENTITY_FIRST_LOCAL + endpoint as u32
}

fn rule(peer: u32, direction: Direction, protocol: Protocol, port: u16, verdict: Verdict, cookie: u32) -> PolicyEntry {
    entry(PolicyKey::new(peer, direction, Some(protocol), port, 16), PolicyValue::new(verdict, cookie))
}

fn open(direction: Direction, cookie: u32) -> PolicyEntry {
    entry(PolicyKey::new(IDENTITY_ANY, direction, None, 0, 0), PolicyValue::new(Verdict::Allow, cookie))
}

/// e0 (client) and e1 (web), with policy routing for the proxy's mark as the agent installs it.
fn setup(prefix: &str, client: Vec<PolicyEntry>, web: Vec<PolicyEntry>) -> (Topology, Datapath) {
    let topology = Topology::new(prefix, 2, false, 60);
    let mut datapath = with_proxy_routing(&topology);
    let _inside = InNetns::enter(&topology.node);
    for (i, (endpoint, policy)) in topology.endpoints.iter().zip([client, web]).enumerate() {
        datapath.set_ipcache(endpoint.addr, 32, identity(i)).unwrap();
        datapath.load_slot(i as u32, Slot::A, &policy).unwrap();
        datapath.attach(i as u32, &endpoint.host_if, endpoint.addr).unwrap();
    }
    (topology, datapath)
}

/// The topology's datapath, with policy routing for the proxy's mark as the agent installs it.
fn with_proxy_routing(topology: &Topology) -> Datapath {
    let node = topology.node.clone();
    let mark = format!("{MARK_TO_PROXY:#x}/{PROXY_MARK_MASK:#x}");
    run(&["ip", "-n", &node, "rule", "add", "fwmark", &mark, "lookup", "2005", "pref", "9"]);
    run(&["ip", "-n", &node, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "2005"]);
    // Early demux would find the proxy's socket for a connection the node still forwards (to
    // the pod whose ingress steers it), and forwarding drops a packet with a socket.
    run(&["ip", "netns", "exec", &node, "sysctl", "-qw", "net.ipv4.tcp_early_demux=0"]);
    let _inside = InNetns::enter(&node);
    topology.datapath()
}

/// Answers each line with `<peer address> <line>`: who it saw, and what arrived.
fn web_server(ns: &str) {
    let listener = in_netns(ns, || TcpListener::bind(("0.0.0.0", WEB_PORT)).expect("bind the web port"));
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let peer = stream.peer_addr().unwrap().ip();
                let mut writer = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if writeln!(writer, "{peer} {line}").is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// What the test proxy saw of one connection: its client and its original destination.
#[derive(Debug, PartialEq)]
struct Accepted {
    client: SocketAddr,
    destination: SocketAddr,
}

/// A transparent proxy as the agent's works: listens on 127.0.0.1, connects upstream from the
/// client's address with the proxy's mark, and relays lines with `via-proxy ` prepended.
fn test_proxy(node: &str) -> mpsc::Receiver<Accepted> {
    let listener = in_netns(node, || {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_ip_transparent_v4(true).expect("IP_TRANSPARENT");
        socket.set_reuse_address(true).unwrap();
        socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, PROXY_PORT)).into()).unwrap();
        socket.listen(64).unwrap();
        TcpListener::from(socket)
    });
    let (tx, rx) = mpsc::channel();
    let node = node.to_owned();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let accepted = Accepted { client: client.peer_addr().unwrap(), destination: client.local_addr().unwrap() };
            let (from, to) = (accepted.client, accepted.destination);
            let _ = tx.send(accepted);
            let upstream = in_netns(&node, move || upstream(from, to));
            thread::spawn(move || relay(client, upstream));
        }
    });
    rx
}

fn upstream(client: SocketAddr, destination: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_ip_transparent_v4(true).unwrap();
    socket.set_mark(MARK_FROM_PROXY).unwrap();
    socket.bind(&SocketAddr::from((client.ip(), 0)).into()).unwrap();
    socket.connect_timeout(&destination.into(), Duration::from_secs(2)).expect("connect upstream");
    TcpStream::from(socket)
}

fn relay(client: TcpStream, upstream: TcpStream) {
    let mut to_client = client.try_clone().unwrap();
    let mut to_upstream = upstream.try_clone().unwrap();
    let mut replies = BufReader::new(upstream).lines();
    for line in BufReader::new(client).lines().map_while(Result::ok) {
        let reply = writeln!(to_upstream, "via-proxy {line}").ok().and_then(|()| replies.next()?.ok());
        match reply {
            Some(reply) if writeln!(to_client, "{reply}").is_ok() => {}
            _ => break,
        }
    }
}

/// Sends lines on one connection from `ns`; the replies, `None` when it cannot connect.
fn exchange(ns: &str, to: Ipv4Addr, lines: &[&str]) -> Option<Vec<String>> {
    let mut stream = tcp_connect(ns, to, WEB_PORT)?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut replies = BufReader::new(stream.try_clone().unwrap()).lines();
    let mut got = Vec::new();
    for line in lines {
        writeln!(stream, "{line}").ok()?;
        got.push(replies.next()?.ok()?);
    }
    Some(got)
}

fn expect_proxied(topology: &Topology, accepted: &mpsc::Receiver<Accepted>) {
    let (client, web) = (&topology.endpoints[0], &topology.endpoints[1]);
    let replies = exchange(&client.ns, web.addr, &["GET /a", "GET /b", "GET /c"]).expect("a connection");
    // The web server saw the client's own address, and every line came through the proxy, on
    // one connection (packets after the handshake find the proxy's socket too).
    let want: Vec<String> = ["/a", "/b", "/c"].iter().map(|p| format!("{} via-proxy GET {p}", client.addr)).collect();
    assert_eq!(replies, want);
    let seen = accepted.recv_timeout(Duration::from_secs(1)).expect("the proxy accepted the connection");
    assert_eq!(seen.destination, SocketAddr::V4(SocketAddrV4::new(web.addr, WEB_PORT)), "the original destination");
    assert_eq!(seen.client.ip(), client.addr);
    assert!(accepted.try_recv().is_err(), "one connection for three requests");
}

#[test]
fn egress_redirect_reaches_the_proxy_and_upstream_keeps_the_client_address() {
    let client = vec![rule(identity(1), Direction::Egress, Protocol::TCP, WEB_PORT, Verdict::Redirect, 1)];
    let web = vec![rule(identity(0), Direction::Ingress, Protocol::TCP, WEB_PORT, Verdict::Allow, 2)];
    let (topology, mut datapath) = setup("ppe", client, web);
    web_server(&topology.endpoints[1].ns);
    let accepted = test_proxy(&topology.node);
    datapath.set_proxy_port(Some(PROXY_PORT)).unwrap();
    expect_proxied(&topology, &accepted);
}

#[test]
fn ingress_redirect_reaches_the_proxy_through_the_interface_ingress() {
    let client = vec![open(Direction::Egress, 1)];
    let web = vec![rule(identity(0), Direction::Ingress, Protocol::TCP, WEB_PORT, Verdict::Redirect, 2)];
    let (topology, mut datapath) = setup("ppi", client, web);
    web_server(&topology.endpoints[1].ns);
    let accepted = test_proxy(&topology.node);
    datapath.set_proxy_port(Some(PROXY_PORT)).unwrap();
    expect_proxied(&topology, &accepted);
}

#[test]
fn an_egress_redirect_to_a_host_off_the_node_gets_its_replies_through_a_node_interface() {
    // e0 is the client; x, behind a node interface (an uplink), is a host off the node.
    let topology = Topology::new("ppx", 1, true, 70);
    let mut datapath = with_proxy_routing(&topology);
    let (client, host) = (&topology.endpoints[0], topology.external.as_ref().unwrap());
    {
        let _inside = InNetns::enter(&topology.node);
        let policy = [rule(IDENTITY_WORLD, Direction::Egress, Protocol::TCP, WEB_PORT, Verdict::Redirect, 1)];
        datapath.set_ipcache(client.addr, 32, identity(0)).unwrap();
        datapath.load_slot(0, Slot::A, &policy).unwrap();
        datapath.attach(0, &client.host_if, client.addr).unwrap();
        datapath.attach_network(&host.host_if).unwrap();
    }
    web_server(&host.ns);
    let accepted = test_proxy(&topology.node);
    datapath.set_proxy_port(Some(PROXY_PORT)).unwrap();
    // The upstream connection leaves from the client's address; the host's replies, addressed
    // to the client, reach the proxy's upstream socket, not the client (which has no such
    // connection).
    let replies = exchange(&client.ns, host.addr, &["GET /a", "GET /b"]).expect("a connection");
    let want: Vec<String> = ["/a", "/b"].iter().map(|p| format!("{} via-proxy GET {p}", client.addr)).collect();
    assert_eq!(replies, want);
    let seen = accepted.recv_timeout(Duration::from_secs(1)).expect("the proxy accepted the connection");
    assert_eq!(seen.destination, SocketAddr::V4(SocketAddrV4::new(host.addr, WEB_PORT)));
}

#[test]
fn a_redirect_without_a_proxy_fails_closed_over_tcp_and_udp() {
    let client = vec![
        rule(identity(1), Direction::Egress, Protocol::TCP, WEB_PORT, Verdict::Redirect, 1),
        rule(identity(1), Direction::Egress, Protocol::UDP, 53, Verdict::Redirect, 3),
    ];
    let web = vec![open(Direction::Ingress, 2)];
    let (topology, mut datapath) = setup("ppn", client, web);
    web_server(&topology.endpoints[1].ns);
    udp_echo_servers(&topology.endpoints[1].ns, &[53]);
    let (client, web) = (&topology.endpoints[0], &topology.endpoints[1]);
    assert_eq!(exchange(&client.ns, web.addr, &["GET /"]), None, "no proxy runs: the connection is dropped");
    assert!(!udp_ok(&client.ns, web.addr, 53), "no proxy runs: the DNS query is dropped");
    let reasons: Vec<(u8, u16)> = datapath.flows().unwrap().iter().map(|f| (f.key.reason, f.key.dport)).collect();
    assert!(reasons.contains(&(DROP_L7_UNSUPPORTED, WEB_PORT)), "{reasons:?}");
    assert!(reasons.contains(&(DROP_L7_UNSUPPORTED, 53)), "{reasons:?}");
    // A proxy port with nothing listening on it fails closed as well: steered, then dropped.
    datapath.set_proxy_port(Some(PROXY_PORT)).unwrap();
    assert_eq!(exchange(&client.ns, web.addr, &["GET /"]), None, "nothing listens on the proxy port");
    assert!(!udp_ok(&client.ns, web.addr, 53), "no UDP socket on the proxy port");
}

/// Sends a line on `stream` and reads the reply line, or how the connection failed.
fn ask(stream: &mut TcpStream, line: &str) -> Result<String, std::io::ErrorKind> {
    writeln!(stream, "{line}").map_err(|e| e.kind())?;
    let mut reply = String::new();
    match BufReader::new(stream.try_clone().unwrap()).read_line(&mut reply) {
        Ok(0) => Err(std::io::ErrorKind::UnexpectedEof),
        Ok(_) => Ok(reply.trim_end().to_string()),
        Err(e) => Err(e.kind()),
    }
}

#[test]
fn a_connection_keeps_to_the_proxy_as_it_opened_across_flips() {
    let redirect = vec![rule(identity(0), Direction::Ingress, Protocol::TCP, WEB_PORT, Verdict::Redirect, 2)];
    let allow = vec![rule(identity(0), Direction::Ingress, Protocol::TCP, WEB_PORT, Verdict::Allow, 3)];
    let (topology, mut datapath) = setup("ppk", vec![open(Direction::Egress, 1)], redirect.clone());
    web_server(&topology.endpoints[1].ns);
    let _accepted = test_proxy(&topology.node);
    datapath.set_proxy_port(Some(PROXY_PORT)).unwrap();
    let (client, web) = (&topology.endpoints[0], &topology.endpoints[1]);
    let connect = || {
        let stream = tcp_connect(&client.ns, web.addr, WEB_PORT).expect("a connection");
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        stream
    };
    let proxied = |path: &str| Ok(format!("{} via-proxy GET {path}", client.addr));
    let direct = |path: &str| Ok(format!("{} GET {path}", client.addr));
    let promote = |datapath: &mut Datapath, slot: Slot, entries: &[PolicyEntry]| {
        datapath.load_slot(1, slot, entries).unwrap();
        datapath.set_candidate(1, Some(slot)).unwrap();
        datapath.flip(1).unwrap();
        datapath.set_candidate(1, None).unwrap();
    };
    let mut through_proxy = connect();
    assert_eq!(ask(&mut through_proxy, "GET /a"), proxied("/a"));

    // A revision without the redirect is promoted: the connection the proxy holds stays with it
    // (sent straight to the pod, its packets would belong to no connection the pod knows).
    promote(&mut datapath, Slot::B, &allow);
    assert_eq!(ask(&mut through_proxy, "GET /b"), proxied("/b"));
    let mut past_proxy = connect();
    assert_eq!(ask(&mut past_proxy, "GET /c"), direct("/c"), "a new connection is not redirected");

    // A candidate that redirects is only staged: traffic does not change.
    datapath.load_slot(1, Slot::A, &redirect).unwrap();
    datapath.set_candidate(1, Some(Slot::A)).unwrap();
    assert_eq!(ask(&mut past_proxy, "GET /d"), direct("/d"), "staging a candidate changes no connection");
    assert_eq!(ask(&mut through_proxy, "GET /e"), proxied("/e"));

    // Promoted, the redirect cannot judge a connection opened past the proxy: it is reset at
    // once (never left unjudged), and the client's next connection goes through the proxy.
    datapath.flip(1).unwrap();
    datapath.set_candidate(1, None).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(ask(&mut past_proxy, "GET /f"), Err(std::io::ErrorKind::ConnectionReset));
    assert!(started.elapsed() < Duration::from_secs(1), "reset, not left to time out: {:?}", started.elapsed());
    assert_eq!(ask(&mut connect(), "GET /g"), proxied("/g"));
    assert_eq!(ask(&mut through_proxy, "GET /h"), proxied("/h"));
}

/// A UDP socket in `ns` bound to `from` and connected to `to`:53; as the proxy's upstream
/// sockets are when `proxy`: transparent (bound to a pod's address) and marked.
fn dns_socket(ns: &str, from: SocketAddrV4, to: Ipv4Addr, proxy: bool) -> std::net::UdpSocket {
    in_netns(ns, move || {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        if proxy {
            socket.set_ip_transparent_v4(true).unwrap();
            socket.set_mark(MARK_FROM_PROXY).unwrap();
        }
        socket.bind(&SocketAddr::V4(from).into()).unwrap();
        socket.connect(&SocketAddr::from((to, 53)).into()).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        socket.into()
    })
}

fn echoed(socket: &std::net::UdpSocket) -> bool {
    socket.send(b"query").unwrap();
    let mut buf = [0; 16];
    socket.recv(&mut buf).is_ok_and(|n| &buf[..n] == b"query")
}

/// The proxy picks its upstream sockets' ports in the node's namespace, which knows nothing of
/// the pods' ports: an upstream socket may take the addresses of a pod's earlier flow, and a
/// pod those of an earlier upstream socket, while conntrack still holds the earlier flow. The
/// replies go to whoever sent the flow's last forward packet: the proxy's are not forwarded to the pod
/// (where the node's early demux drops them), the pod's are not steered to the proxy's closed
/// socket.
#[test]
fn a_udp_flow_taken_over_by_the_proxy_or_back_by_the_pod_gets_its_replies() {
    let client = vec![open(Direction::Egress, 1)];
    let web = vec![rule(identity(0), Direction::Ingress, Protocol::UDP, 53, Verdict::Allow, 2)];
    let (topology, _datapath) = setup("ppu", client, web);
    let (client, web) = (&topology.endpoints[0], &topology.endpoints[1]);
    udp_echo_servers(&web.ns, &[53]);
    let from = SocketAddrV4::new(client.addr, 40053);
    for (turn, proxy) in [false, true, false, true, false].into_iter().enumerate() {
        let (ns, who) = if proxy { (&topology.node, "the proxy") } else { (&client.ns, "the pod") };
        let socket = dns_socket(ns, from, web.addr, proxy);
        assert!(echoed(&socket) && echoed(&socket), "turn {turn}: {who} asks from {from} and gets no answer");
    }
}
