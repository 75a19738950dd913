//! Test network: a "node" namespace holding the host side of every endpoint's veth, one
//! namespace per endpoint, and optionally an external (non-endpoint) namespace. Dual-stack:
//! addresses are in 10.200.0.0/16 and fd00:200::/48, only on these veths; nothing routes
//! anywhere else. Everything is deleted when
//! the `Topology` is dropped, also when the test panics.
#![allow(dead_code)] // each test binary uses a different part

use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use palisade_common::{PolicyEntry, PolicyKey, PolicyValue};
use palisade_datapath::{AttachMode, Datapath};
use socket2::{Domain, Protocol, Socket, Type};

pub const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

pub fn require_root() {
    // SAFETY: no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "datapath tests need root (network namespaces, tc, bpf): run them with sudo");
}

/// The attach mode the kernel tests run in: `PALISADE_ATTACH_MODE` (`tcx` or `tc`), else what
/// the kernel supports. `make test` runs them in both.
pub fn attach_mode() -> Option<AttachMode> {
    let mode = std::env::var("PALISADE_ATTACH_MODE").ok()?;
    Some(mode.parse().unwrap_or_else(|e| panic!("PALISADE_ATTACH_MODE: {e}")))
}

/// Opens (or adopts) the datapath pinned at `pin_dir`, in the tests' attach mode.
pub fn open_datapath(pin_dir: impl AsRef<std::path::Path>) -> Datapath {
    let mode = attach_mode();
    let datapath = Datapath::open_with(pin_dir, mode).expect("open the datapath");
    if let Some(mode) = mode {
        assert_eq!(datapath.attach_mode(), mode, "the datapath attaches the way the tests run");
    }
    datapath
}

pub fn run(args: &[&str]) {
    let output = Command::new(args[0]).args(&args[1..]).output().expect("run a command");
    assert!(output.status.success(), "{} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
}

pub struct Endpoint {
    pub ns: String,
    /// Host-side interface, in the node namespace.
    pub host_if: String,
    pub addr: Ipv4Addr,
    /// fd00:200:0:<subnet>::2.
    pub addr6: Ipv6Addr,
}

impl Endpoint {
    /// Both addresses, as the datapath attaches an endpoint.
    pub fn addrs(&self) -> palisade_datapath::EndpointAddrs {
        palisade_datapath::EndpointAddrs { v4: Some(self.addr), v6: Some(self.addr6) }
    }
}

pub struct Topology {
    pub node: String,
    pub endpoints: Vec<Endpoint>,
    pub external: Option<Endpoint>,
    pub pin_dir: PathBuf,
    namespaces: Vec<String>,
}

impl Topology {
    /// `prefix` must be unique per test (it names namespaces, interfaces and the pin directory);
    /// `subnet` picks 10.200.<subnet + i>.0/24 per endpoint.
    pub fn new(prefix: &str, endpoints: usize, external: bool, subnet: u8) -> Topology {
        require_root();
        let node = format!("{prefix}-node");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/palisade-test-{prefix}"));
        let mut topology =
            Topology { node: node.clone(), endpoints: Vec::new(), external: None, pin_dir, namespaces: Vec::new() };
        topology.cleanup();
        topology.add_ns(&node);
        run(&["ip", "-n", &node, "link", "set", "lo", "up"]);
        run(&["ip", "netns", "exec", &node, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        run(&["ip", "netns", "exec", &node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        for i in 0..endpoints {
            let endpoint = topology.add_endpoint(prefix, &format!("e{i}"), subnet + i as u8);
            topology.endpoints.push(endpoint);
        }
        if external {
            topology.external = Some(topology.add_endpoint(prefix, "x", subnet + 100));
        }
        topology
    }

    fn add_ns(&mut self, ns: &str) {
        run(&["ip", "netns", "add", ns]);
        self.namespaces.push(ns.to_owned());
    }

    fn add_endpoint(&mut self, prefix: &str, name: &str, subnet: u8) -> Endpoint {
        let ns = format!("{prefix}-{name}");
        let host_if = format!("{prefix}h{name}");
        let peer_if = format!("{prefix}p{name}");
        assert!(host_if.len() <= 15, "interface name {host_if} is too long");
        self.add_ns(&ns);
        let node = self.node.clone();
        run(&["ip", "-n", &node, "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns", &ns]);
        let gateway = format!("10.200.{subnet}.1");
        let addr = Ipv4Addr::new(10, 200, subnet, 2);
        run(&["ip", "-n", &node, "addr", "add", &format!("{gateway}/24"), "dev", &host_if]);
        run(&["ip", "-n", &node, "link", "set", &host_if, "up"]);
        run(&["ip", "-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &peer_if]);
        run(&["ip", "-n", &ns, "link", "set", &peer_if, "up"]);
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        run(&["ip", "-n", &ns, "route", "add", "10.200.0.0/16", "via", &gateway]);
        // Without duplicate address detection: the addresses are usable at once.
        let gateway6 = format!("fd00:200:0:{subnet:x}::1");
        let addr6 = Ipv6Addr::new(0xfd00, 0x200, 0, subnet as u16, 0, 0, 0, 2);
        run(&["ip", "-n", &node, "addr", "add", &format!("{gateway6}/64"), "dev", &host_if, "nodad"]);
        run(&["ip", "-n", &ns, "addr", "add", &format!("{addr6}/64"), "dev", &peer_if, "nodad"]);
        run(&["ip", "-n", &ns, "route", "add", "fd00:200::/48", "via", &gateway6]);
        Endpoint { ns, host_if, addr, addr6 }
    }

    /// Opens (or adopts) this test's datapath. Call from a thread inside the node namespace.
    pub fn datapath(&self) -> Datapath {
        open_datapath(&self.pin_dir)
    }

    fn cleanup(&self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        if let Ok(output) = Command::new("ip").args(["netns", "list"]).output() {
            let prefix = self.node.trim_end_matches("-node").to_owned() + "-";
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or("");
                if name.starts_with(&prefix) {
                    let _ = Command::new("ip").args(["netns", "del", name]).status();
                }
            }
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// Moves the calling thread into `ns` until dropped. tc attach resolves interface names in the
/// caller's namespace, so the datapath is driven from inside the node namespace.
pub struct InNetns {
    original: File,
}

impl InNetns {
    pub fn enter(ns: &str) -> InNetns {
        let original = File::open("/proc/thread-self/ns/net").expect("open the current netns");
        setns(&File::open(format!("/run/netns/{ns}")).expect("open the netns"));
        InNetns { original }
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        setns(&self.original);
    }
}

fn setns(file: &File) {
    // SAFETY: a valid namespace file descriptor; affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a thread inside `ns`. Sockets created there stay in that namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    thread::spawn(move || {
        let _inside = InNetns::enter(&ns);
        f()
    })
    .join()
    .expect("netns thread")
}

/// TCP echo server on every given port of `ns`, both families (an IPv6 socket takes IPv4 too);
/// runs until the process exits.
pub fn tcp_echo_servers(ns: &str, ports: &[u16]) {
    for &port in ports {
        let listener = in_netns(ns, move || TcpListener::bind(("::", port)).expect("bind tcp"));
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || echo(stream));
            }
        });
    }
}

fn echo(mut stream: TcpStream) {
    let mut buf = [0; 1024];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// UDP echo server on every given port of `ns`, both families; counts datagrams per port.
pub fn udp_echo_servers(ns: &str, ports: &[u16]) -> Vec<Arc<AtomicU64>> {
    ports
        .iter()
        .map(|&port| {
            let socket = in_netns(ns, move || {
                let socket = Socket::new(Domain::IPV6, Type::DGRAM, None).expect("udp socket");
                socket.set_only_v6(false).expect("dual-stack socket");
                socket.set_recv_buffer_size(8 << 20).expect("rcvbuf");
                socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into()).expect("bind udp");
                UdpSocket::from(socket)
            });
            let received = Arc::new(AtomicU64::new(0));
            let counter = received.clone();
            thread::spawn(move || {
                // Whole datagrams, up to the largest: fragmented ones are echoed fragmented.
                let mut buf = vec![0; 65536];
                while let Ok((n, from)) = socket.recv_from(&mut buf) {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let _ = socket.send_to(&buf[..n], from);
                }
            });
            received
        })
        .collect()
}

pub fn tcp_connect(ns: &str, to: impl Into<IpAddr>, port: u16) -> Option<TcpStream> {
    let to = to.into();
    in_netns(ns, move || {
        let stream = TcpStream::connect_timeout(&SocketAddr::from((to, port)), PROBE_TIMEOUT).ok()?;
        stream.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
        Some(stream)
    })
}

/// Sends a message and expects it back.
pub fn tcp_roundtrip(stream: &mut TcpStream) -> bool {
    if stream.write_all(b"ping").is_err() {
        return false;
    }
    let mut buf = [0; 4];
    stream.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

pub fn tcp_ok(ns: &str, to: impl Into<IpAddr>, port: u16) -> bool {
    tcp_connect(ns, to, port).is_some_and(|mut stream| tcp_roundtrip(&mut stream))
}

pub fn udp_socket(ns: &str, to: impl Into<IpAddr>, port: u16) -> UdpSocket {
    let to = to.into();
    in_netns(ns, move || {
        let any: IpAddr = if to.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
        let socket = UdpSocket::bind((any, 0)).expect("bind udp client");
        socket.connect((to, port)).expect("connect udp");
        socket.set_read_timeout(Some(PROBE_TIMEOUT)).expect("timeout");
        socket
    })
}

#[derive(Debug, PartialEq, Eq)]
pub enum UdpOutcome {
    Echoed,
    Refused,
    Silent,
}

pub fn udp_probe(ns: &str, to: impl Into<IpAddr>, port: u16) -> UdpOutcome {
    let socket = udp_socket(ns, to, port);
    socket.send(b"probe").expect("send udp");
    let mut buf = [0; 16];
    match socket.recv(&mut buf) {
        Ok(_) => UdpOutcome::Echoed,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => UdpOutcome::Refused,
        Err(_) => UdpOutcome::Silent,
    }
}

pub fn udp_ok(ns: &str, to: impl Into<IpAddr>, port: u16) -> bool {
    udp_probe(ns, to, port) == UdpOutcome::Echoed
}

/// ICMP or ICMPv6 echo with a raw socket (no `ping` process: fast and exact).
pub struct Pinger {
    socket: Socket,
    to: IpAddr,
    id: u16,
    seq: u16,
}

impl Pinger {
    pub fn new(ns: &str, to: impl Into<IpAddr>) -> Pinger {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0x5100);
        let to = to.into();
        let (domain, protocol) =
            if to.is_ipv4() { (Domain::IPV4, Protocol::ICMPV4) } else { (Domain::IPV6, Protocol::ICMPV6) };
        let socket = in_netns(ns, move || Socket::new(domain, Type::RAW, Some(protocol)).expect("raw icmp socket"));
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) as u16;
        Pinger { socket, to, id, seq: 0 }
    }

    pub fn ping(&mut self, timeout: Duration) -> bool {
        self.seq = self.seq.wrapping_add(1);
        // ICMPv6 echo request 128 (the kernel fills in its checksum), ICMP echo 8.
        let (request, reply) = if self.to.is_ipv4() { (8, 0) } else { (128, 129) };
        let mut packet = [request, 0, 0, 0, (self.id >> 8) as u8, self.id as u8, (self.seq >> 8) as u8, self.seq as u8];
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
        let to = match self.to {
            IpAddr::V4(v4) => SocketAddr::V4(SocketAddrV4::new(v4, 0)),
            IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, 0, 0, 0)),
        };
        if self.socket.send_to(&packet, &to.into()).is_err() {
            return false;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.socket.set_read_timeout(Some(left)).expect("timeout");
            let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
            let Ok((n, from)) = self.socket.recv_from(&mut buf) else {
                return false;
            };
            // SAFETY: the kernel initialised the first n bytes.
            let buf: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
            // An IPv4 raw socket reads the IP header too; an IPv6 one only the message.
            let icmp = if self.to.is_ipv4() { &buf[((buf[0] & 0x0f) as usize) * 4..] } else { &buf[..] };
            if from.as_socket().map(|from| from.ip()) == Some(self.to)
                && icmp.len() >= 8
                && icmp[0] == reply
                && u16::from_be_bytes([icmp[4], icmp[5]]) == self.id
                && u16::from_be_bytes([icmp[6], icmp[7]]) == self.seq
            {
                return true;
            }
        }
    }
}

/// An Ethernet frame carrying `payload` as `ethertype`.
pub fn ethernet_frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An IPv4 packet (header with a valid checksum, then `l4`), fragment `offset` (in 8-byte
/// units) of datagram `id`, with more fragments to come when `more`.
pub fn ipv4_packet(
    protocol: u8,
    from: Ipv4Addr,
    to: Ipv4Addr,
    (id, offset, more): (u16, u16, bool),
    l4: &[u8],
) -> Vec<u8> {
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6..8].copy_from_slice(&(offset | if more { 0x2000 } else { 0 }).to_be_bytes());
    ip[8] = 64;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&from.octets());
    ip[16..20].copy_from_slice(&to.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(l4);
    ip
}

/// A whole (unfragmented) IPv4 packet in an Ethernet frame.
pub fn ipv4_frame(protocol: u8, from: Ipv4Addr, to: Ipv4Addr, l4: &[u8]) -> Vec<u8> {
    ethernet_frame(0x0800, &ipv4_packet(protocol, from, to, (1, 0, false), l4))
}

/// An ICMP message of `icmp_type` with the checksum set: `rest` follows the type, code and
/// checksum (an echo's id and sequence, an error's unused word and quoted packet).
pub fn icmp_message(icmp_type: u8, rest: &[u8]) -> Vec<u8> {
    let mut message = vec![icmp_type, 0, 0, 0];
    message.extend_from_slice(rest);
    let sum = checksum(&message);
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    message
}

/// A UDP header and payload (checksum 0: none).
pub fn udp_datagram(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    udp
}

/// Sends a hand-made IPv4 packet (header included, any source address) from inside `ns`, as a
/// pod with CAP_NET_RAW can.
pub fn send_raw_ipv4(ns: &str, packet: Vec<u8>) {
    let to = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    in_netns(ns, move || {
        // IPPROTO_RAW implies IP_HDRINCL: the kernel sends the header as given.
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW))).expect("raw socket");
        socket.send_to(&packet, &SocketAddrV4::new(to, 0).into()).expect("send a raw packet");
    });
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn ping_ok(ns: &str, to: impl Into<IpAddr>) -> bool {
    Pinger::new(ns, to).ping(PROBE_TIMEOUT)
}

/// Polls `condition` until it holds or a second has passed.
pub fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        thread::sleep(Duration::from_millis(2));
    }
    condition()
}

/// Index of an interface in the calling thread's network namespace.
pub fn if_index(ifname: &str) -> u32 {
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "no interface {ifname}");
    index
}

pub fn entry(key: PolicyKey, value: PolicyValue) -> PolicyEntry {
    PolicyEntry { key, value }
}

/// A flag that stops a background loop when dropped.
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
