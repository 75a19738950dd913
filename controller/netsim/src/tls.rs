//! The one connection of `palisade local probe --tls-sni`: a real TLS ClientHello (TLS 1.3, as
//! a browser sends it, with the server name given) on a TCP port, and what the other end does
//! with it. No handshake is completed: a proxy judging `serverNames` decides on the ClientHello
//! alone, passing the connection through or resetting it.
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::net::in_netns;
use crate::probe::Outcome;

/// How the server side took the ClientHello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsOutcome {
    /// It answered with `bytes` bytes (a ServerHello, an alert, or the ClientHello echoed by an
    /// echo responder): the connection went through.
    Answered { bytes: usize, time: Duration },
    /// It closed the connection normally (FIN) after the ClientHello: went through too.
    Closed { time: Duration },
    /// The connection was reset after the ClientHello: what a proxy does to a server name no
    /// rule allows.
    Reset,
    /// The connection itself failed: refused, timed out or unreachable.
    Failed(Outcome),
}

impl TlsOutcome {
    /// The ClientHello got through: answered or closed normally, not reset.
    pub fn passed(&self) -> bool {
        matches!(self, TlsOutcome::Answered { .. } | TlsOutcome::Closed { .. })
    }
}

impl std::fmt::Display for TlsOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |time: &Duration| time.as_secs_f64() * 1000.0;
        match self {
            TlsOutcome::Answered { bytes, time } => write!(f, "answered ({bytes} bytes, {:.1} ms)", ms(time)),
            TlsOutcome::Closed { time } => write!(f, "closed by the server ({:.1} ms)", ms(time)),
            TlsOutcome::Reset => f.write_str("reset"),
            TlsOutcome::Failed(outcome) => write!(f, "{outcome}"),
        }
    }
}

/// Connects from inside `netns` to `to:port`, sends a ClientHello indicating `server_name`
/// (none when empty) and waits up to `timeout` for the first answer. Errors are failures to
/// try at all.
pub fn probe(
    netns: &str,
    to: impl Into<IpAddr>,
    port: u16,
    server_name: &str,
    timeout: Duration,
) -> io::Result<TlsOutcome> {
    let (to, hello) = (to.into(), client_hello(server_name));
    in_netns(netns, move || probe_here(SocketAddr::from((to, port)), &hello, timeout))?
}

fn probe_here(to: SocketAddr, hello: &[u8], timeout: Duration) -> io::Result<TlsOutcome> {
    let start = Instant::now();
    let failed = |e: io::Error| match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => Ok(TlsOutcome::Reset),
        ErrorKind::ConnectionRefused => Ok(TlsOutcome::Failed(Outcome::Refused)),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Ok(TlsOutcome::Failed(Outcome::TimedOut)),
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => Ok(TlsOutcome::Failed(Outcome::Unreachable)),
        _ => Err(e),
    };
    let mut stream = match TcpStream::connect_timeout(&to, timeout) {
        Ok(stream) => stream,
        Err(e) => return failed(e),
    };
    stream.set_read_timeout(Some(timeout.saturating_sub(start.elapsed()).max(Duration::from_millis(1))))?;
    if let Err(e) = stream.write_all(hello) {
        return failed(e);
    }
    let mut buf = [0; 4096];
    match stream.read(&mut buf) {
        Ok(0) => Ok(TlsOutcome::Closed { time: start.elapsed() }),
        Ok(bytes) => Ok(TlsOutcome::Answered { bytes, time: start.elapsed() }),
        Err(e) => failed(e),
    }
}

/// A TLS 1.3 ClientHello in one record: random bytes, a session id, the TLS 1.3 cipher suites,
/// and the extensions a client needs (server_name unless `server_name` is empty,
/// supported_versions, supported_groups, signature_algorithms, an X25519 key share).
pub fn client_hello(server_name: &str) -> Vec<u8> {
    let mut seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
    let mut random = |n: usize| {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect::<Vec<u8>>()
    };
    let with_length = |width: usize, bytes: &[u8]| {
        let mut out = bytes.len().to_be_bytes()[8 - width..].to_vec();
        out.extend_from_slice(bytes);
        out
    };
    let extension = |kind: u16, data: &[u8]| [&kind.to_be_bytes()[..], &with_length(2, data)].concat();
    let mut extensions = Vec::new();
    if !server_name.is_empty() {
        let entry = [&[0u8][..], &with_length(2, server_name.as_bytes())].concat();
        extensions.extend(extension(0, &with_length(2, &entry)));
    }
    extensions.extend(extension(43, &with_length(1, &[3, 4]))); // supported_versions: TLS 1.3
    extensions.extend(extension(10, &with_length(2, &[0, 29, 0, 23]))); // x25519, secp256r1
    extensions.extend(extension(13, &with_length(2, &[4, 3, 8, 4, 4, 1]))); // ecdsa, rsa-pss, rsa
    let key_share = [&[0u8, 29][..], &with_length(2, &random(32))].concat();
    extensions.extend(extension(51, &with_length(2, &key_share)));
    let mut body = vec![3, 3];
    body.extend(random(32));
    body.extend(with_length(1, &random(32)));
    body.extend(with_length(2, &[0x13, 0x01, 0x13, 0x02, 0x13, 0x03]));
    body.extend([1, 0]);
    body.extend(with_length(2, &extensions));
    let handshake = [&[1u8][..], &with_length(3, &body)].concat();
    [&[22u8, 3, 1][..], &with_length(2, &handshake)].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_hello_is_one_handshake_record_with_the_server_name() {
        let hello = client_hello("api.example.com");
        assert_eq!(&hello[..3], &[22, 3, 1]);
        assert_eq!(usize::from(u16::from_be_bytes([hello[3], hello[4]])), hello.len() - 5);
        assert_eq!(hello[5], 1, "ClientHello");
        assert!(hello.windows(15).any(|w| w == b"api.example.com"));
        assert!(client_hello("").len() < hello.len() - 15);
    }
}
