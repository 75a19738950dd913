//! One real connection attempt from inside a pod's network namespace.
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::net::{PodNet, in_netns};
use crate::responders::{WHO, read_who};

/// What the responders echo back.
const PAYLOAD: &[u8] = b"palisade-probe";

/// A destination port: `5432/TCP`, `53/UDP` or `ICMP` (echo; ICMPv6 echo to an IPv6 address). Parsed from `5432`, `5432/TCP`,
/// `53/udp` or `icmp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Port {
    Tcp(u16),
    Udp(u16),
    Icmp,
}

impl Port {
    /// The port number; none for ICMP.
    pub fn number(self) -> Option<u16> {
        match self {
            Port::Tcp(number) | Port::Udp(number) => Some(number),
            Port::Icmp => None,
        }
    }
}

impl FromStr for Port {
    type Err = String;

    fn from_str(text: &str) -> Result<Port, String> {
        if text.eq_ignore_ascii_case("icmp") {
            return Ok(Port::Icmp);
        }
        let (number, protocol) = text.split_once('/').unwrap_or((text, "TCP"));
        let port = match number.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(format!("{number:?} is not a port number (1-65535)")),
        };
        match protocol.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Port::Tcp(port)),
            "UDP" => Ok(Port::Udp(port)),
            _ => Err(format!("protocol {protocol:?}: use TCP or UDP, or `icmp` without a port")),
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Tcp(port) => write!(f, "{port}/TCP"),
            Port::Udp(port) => write!(f, "{port}/UDP"),
            Port::Icmp => f.write_str("ICMP"),
        }
    }
}

/// How an attempt ended. Everything but `Connected` is an answer from the network that the flow
/// does not pass (a policy drop shows as `TimedOut`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// TCP connected, or the UDP datagram or ICMP echo came back; with the round-trip time.
    Connected(Duration),
    /// TCP reset, or ICMP port unreachable for UDP.
    Refused,
    TimedOut,
    /// ICMP host or network unreachable.
    Unreachable,
}

impl Outcome {
    pub fn is_connected(&self) -> bool {
        matches!(self, Outcome::Connected(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Connected(time) => write!(f, "connected ({:.1} ms)", time.as_secs_f64() * 1000.0),
            Outcome::Refused => f.write_str("refused"),
            Outcome::TimedOut => f.write_str("timed out"),
            Outcome::Unreachable => f.write_str("unreachable"),
        }
    }
}

/// Connects from inside `from`'s namespace to `to` once: a TCP handshake, a UDP datagram that
/// must be echoed, or an ICMP echo (ICMPv6 to an IPv6 address). Errors are failures to try at
/// all (no such namespace).
pub fn probe(from: &PodNet, to: impl Into<IpAddr>, port: Port, timeout: Duration) -> io::Result<Outcome> {
    probe_from_netns(&from.netns, to, port, timeout)
}

/// [`probe`] from any network namespace of the local network, the node namespace included
/// (whose connections come from the node's address: the local host).
pub fn probe_from_netns(netns: &str, to: impl Into<IpAddr>, port: Port, timeout: Duration) -> io::Result<Outcome> {
    let to = to.into();
    in_netns(netns, move || attempt(to, port, timeout, Exchange::Connect).map(|(outcome, _)| outcome))?
}

/// Connects from `netns` to `to` on a TCP or UDP `port` and asks the responder there [`WHO`] it
/// is: the outcome, and the pod that answered when connected (`None` if the answer names none).
/// Through a ClusterIP, that is the backend the translation chose.
pub fn ask_who(
    netns: &str,
    to: impl Into<IpAddr>,
    port: Port,
    timeout: Duration,
) -> io::Result<(Outcome, Option<String>)> {
    let to = to.into();
    in_netns(netns, move || attempt(to, port, timeout, Exchange::Who))?
}

/// What an attempt sends once connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exchange {
    /// TCP: the handshake only; UDP: a datagram that must be echoed.
    Connect,
    /// A few bytes that must be echoed, on TCP too, as real clients send data.
    Echo,
    /// [`WHO`], whose answer names the pod.
    Who,
}

/// One attempt from the calling thread's namespace, with the pod named by the answer to [`WHO`].
pub(crate) fn attempt(
    to: IpAddr,
    port: Port,
    timeout: Duration,
    exchange: Exchange,
) -> io::Result<(Outcome, Option<String>)> {
    let start = Instant::now();
    let sent = if exchange == Exchange::Who { WHO } else { PAYLOAD };
    let answered = match port {
        Port::Tcp(port) => tcp(to, port, timeout, (exchange != Exchange::Connect).then_some(sent)),
        Port::Udp(port) => udp(to, port, timeout, sent),
        Port::Icmp => echo(to, timeout).map(|()| Vec::new()),
    };
    match answered {
        Ok(reply) => {
            let who = if exchange == Exchange::Who { read_who(&reply) } else { None };
            Ok((Outcome::Connected(start.elapsed()), who))
        }
        Err(e) => match e.kind() {
            ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof => Ok((Outcome::Refused, None)),
            ErrorKind::TimedOut | ErrorKind::WouldBlock => Ok((Outcome::TimedOut, None)),
            ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => Ok((Outcome::Unreachable, None)),
            _ => Err(e),
        },
    }
}

/// Connects, and with `send` writes it and reads the reply: as many bytes, or one line.
fn tcp(to: IpAddr, port: u16, timeout: Duration, send: Option<&[u8]>) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::from((to, port)), timeout)?;
    let Some(send) = send else { return Ok(Vec::new()) };
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(send)?;
    let mut reply = Vec::new();
    let mut buf = [0; 256];
    // A line is answered with a line (WHO); anything else is echoed.
    let line = send.ends_with(b"\n");
    while if line { !reply.ends_with(b"\n") } else { reply.len() < send.len() } {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        reply.extend_from_slice(&buf[..n]);
    }
    Ok(reply)
}

fn udp(to: IpAddr, port: u16, timeout: Duration, send: &[u8]) -> io::Result<Vec<u8>> {
    let any: IpAddr = if to.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let socket = UdpSocket::bind((any, 0))?;
    // Connected, so that an ICMP port unreachable comes back as ECONNREFUSED.
    socket.connect((to, port))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(send)?;
    let mut buf = [0; 512];
    let n = socket.recv(&mut buf)?;
    Ok(buf[..n].to_vec())
}

/// Tells this process's concurrent pings apart; raw sockets see every reply in the namespace.
fn echo_id() -> u16 {
    static NEXT_ID: AtomicU16 = AtomicU16::new(0);
    (std::process::id() as u16) ^ NEXT_ID.fetch_add(1, Ordering::Relaxed).rotate_left(8)
}

/// ICMP or ICMPv6 echo over a raw socket; the kernel in the destination namespace answers.
/// The kernel checksums ICMPv6 itself; an IPv4 raw socket reads the IP header too.
fn echo(to: IpAddr, timeout: Duration) -> io::Result<()> {
    let id = echo_id();
    let (domain, protocol, request_type, reply_type) = match to {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8, 0),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128, 129),
    };
    let mut request = [request_type, 0, 0, 0, (id >> 8) as u8, id as u8, 0, 1];
    if to.is_ipv4() {
        let sum = checksum(&request);
        request[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    let socket = Socket::new(domain, Type::RAW, Some(protocol))?;
    // Connected: the socket sees only messages from `to`.
    socket.connect(&SocketAddr::from((to, 0)).into())?;
    socket.send(&request)?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        socket.set_read_timeout(Some(left))?;
        let n = (&socket).read(&mut buf)?;
        let header = if to.is_ipv4() { ((buf[0] & 0x0f) as usize) * 4 } else { 0 };
        let Some(message) = buf[..n].get(header..header + 8) else { continue };
        if message[0] == reply_type && message[4..8] == request[4..8] {
            return Ok(());
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_and_print() {
        assert_eq!("5432".parse(), Ok(Port::Tcp(5432)));
        assert_eq!("53/udp".parse(), Ok(Port::Udp(53)));
        assert_eq!("ICMP".parse(), Ok(Port::Icmp));
        assert_eq!(Port::Tcp(8080).to_string(), "8080/TCP");
        assert!("0/TCP".parse::<Port>().unwrap_err().contains("not a port number"));
        assert!("80/SCTP".parse::<Port>().unwrap_err().contains("use TCP or UDP"));
        assert_eq!(Outcome::Connected(Duration::from_micros(420)).to_string(), "connected (0.4 ms)");
    }
}
