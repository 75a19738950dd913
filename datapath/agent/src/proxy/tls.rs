//! One steered connection on a port whose rules are `serverNames`: the proxy reads the client's
//! TLS ClientHello without terminating TLS, judges the server name it indicates (SNI) under the
//! enforced and the candidate revision, and either splices the connection to its original
//! destination from the client's own address (the ClientHello first) or resets it, as Envoy
//! closes a connection that matches no filter chain. A connection that does not start with a
//! ClientHello, or whose ClientHello indicates no server name, matches no `serverNames` rule.
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_policy::l7::L7Request;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::judge::{Ends, Sides, judge};
use super::observed::Answered;
use super::{ProxyContext, connect};
use crate::observe::{L7Flow, TlsFlow};

/// The most the proxy reads before it has the whole ClientHello: a ClientHello with
/// post-quantum key shares is about 2 KiB; anything past this is no client's.
pub(super) const MAX_CLIENT_HELLO: usize = 32 * 1024;
/// How long a client has to send its ClientHello.
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS record content type `handshake` and handshake type `client_hello`.
const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
/// The `server_name` extension (RFC 6066) and its `host_name` name type.
const SERVER_NAME: u16 = 0;
const HOST_NAME: u8 = 0;
/// The largest TLS plaintext record (RFC 8446 5.1).
const MAX_RECORD: usize = 1 << 14;

/// What the bytes a client sent first say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ClientHello {
    /// A ClientHello, maybe not all of it yet: read more.
    Incomplete,
    /// A whole ClientHello, with the server name it indicates (lower case, without the root
    /// dot), if any.
    Complete(Option<String>),
    /// Not a ClientHello (not TLS, or a malformed one): why.
    Invalid(&'static str),
}

/// Parses the first bytes of a connection as TLS handshake records carrying a ClientHello,
/// which may span several records. Every length is checked against what it is contained in.
pub(super) fn parse_client_hello(bytes: &[u8]) -> ClientHello {
    let mut handshake = Vec::new();
    let mut rest = bytes;
    loop {
        if rest.is_empty() {
            return ClientHello::Incomplete;
        }
        if rest[0] != HANDSHAKE {
            return ClientHello::Invalid("not a TLS handshake record");
        }
        if rest.len() >= 2 && rest[1] != 3 {
            return ClientHello::Invalid("not a TLS record version");
        }
        if rest.len() < 5 {
            return ClientHello::Incomplete;
        }
        let length = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if length == 0 || length > MAX_RECORD {
            return ClientHello::Invalid("a TLS record of an invalid length");
        }
        let Some(fragment) = rest.get(5..5 + length) else { return ClientHello::Incomplete };
        handshake.extend_from_slice(fragment);
        rest = &rest[5 + length..];
        if handshake[0] != CLIENT_HELLO {
            return ClientHello::Invalid("a TLS handshake that is not a ClientHello");
        }
        let Some(header) = handshake.get(1..4) else { continue };
        let body_length = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        if body_length > MAX_CLIENT_HELLO {
            return ClientHello::Invalid("a ClientHello too long");
        }
        if let Some(body) = handshake.get(4..4 + body_length) {
            return match server_name(body) {
                Some(name) => ClientHello::Complete(name),
                None => ClientHello::Invalid("a malformed ClientHello"),
            };
        }
    }
}

/// A cursor over a message's bytes whose reads fail past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a `width`-byte length.
    fn vector(&mut self, width: usize) -> Option<Reader<'a>> {
        let length = match width {
            1 => usize::from(self.u8()?),
            _ => usize::from(self.u16()?),
        };
        Some(Reader(self.take(length)?))
    }
}

/// The host name of a ClientHello body's `server_name` extension: `Some(None)` when it has
/// none, `None` when the body is malformed (lengths that overrun, a second `server_name`
/// extension, a name that is not a DNS host name).
fn server_name(body: &[u8]) -> Option<Option<String>> {
    let mut hello = Reader(body);
    hello.take(2 + 32)?; // legacy_version, random
    hello.vector(1)?; // legacy_session_id
    hello.vector(2)?; // cipher_suites
    hello.vector(1)?; // legacy_compression_methods
    if hello.0.is_empty() {
        // TLS 1.2 and earlier allow a ClientHello without extensions.
        return Some(None);
    }
    let mut extensions = hello.vector(2)?;
    if !hello.0.is_empty() {
        return None;
    }
    let mut found = None;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = extensions.vector(2)?;
        if kind != SERVER_NAME {
            continue;
        }
        if found.is_some() {
            return None;
        }
        let mut names = data.vector(2)?;
        if !data.0.is_empty() {
            return None;
        }
        let mut host = None;
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name = names.vector(2)?.0;
            if name_type != HOST_NAME {
                continue;
            }
            if host.is_some() {
                return None;
            }
            host = Some(host_name(name)?);
        }
        found = Some(host);
    }
    Some(found.flatten())
}

/// A SNI host name as the rules compare it: ASCII letters, digits, `-`, `_` and dots, lower
/// case, without the root dot (RFC 6066 forbids it, but a name is not refused for it).
fn host_name(raw: &[u8]) -> Option<String> {
    let ok = !raw.is_empty()
        && raw.len() <= 253 + 1
        && raw.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let name = std::str::from_utf8(raw).ok().filter(|_| ok)?.trim_end_matches('.').to_ascii_lowercase();
    (!name.is_empty() && !name.split('.').any(str::is_empty)).then_some(name)
}

/// Reads until the client's first bytes are a whole ClientHello or not one at all, at most
/// [`MAX_CLIENT_HELLO`] bytes plus a record; `None` when the client closes or fails first.
async fn read_client_hello(client: &mut TcpStream, read: &mut Vec<u8>) -> Option<ClientHello> {
    let mut chunk = [0; 4096];
    loop {
        match parse_client_hello(read) {
            ClientHello::Incomplete if read.len() > MAX_CLIENT_HELLO + 5 + MAX_RECORD => {
                return Some(ClientHello::Invalid("a ClientHello too long"));
            }
            ClientHello::Incomplete => {}
            parsed => return Some(parsed),
        }
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => read.extend_from_slice(&chunk[..n]),
        }
    }
}

pub(super) async fn serve(mut client: TcpStream, ends: Ends, sides: Sides, context: Arc<ProxyContext>) {
    let started = Instant::now();
    let mut read = Vec::with_capacity(2048);
    let hello = match tokio::time::timeout(CLIENT_HELLO_TIMEOUT, read_client_hello(&mut client, &mut read)).await {
        Ok(Some(hello)) => hello,
        // Closed before it said anything to judge.
        Ok(None) => return,
        Err(_) => ClientHello::Invalid("no ClientHello in time"),
    };
    let server_name = match hello {
        ClientHello::Complete(name) => name,
        ClientHello::Invalid(why) => {
            debug!(client = %ends.client, destination = %ends.destination, "TLS proxy: {why}");
            None
        }
        ClientHello::Incomplete => unreachable!("read until complete or invalid"),
    };
    // Without a policy (the agent has not converged yet) nothing can be judged: fail closed.
    let Some(policy) = context.policy.current() else { return reset(client) };
    let request = L7Request::Tls(server_name.clone());
    let found = sides.of(&policy.enforced, ends);
    let judged = judge(&policy, &found, ends, &request, &context.diffs);
    let denial = judged.denial().map(|d| d.reason.clone());
    let answered = Answered { policy: &policy, found: &found, ends, judged: &judged, started };
    let flow = L7Flow { latency_ns: 0, http: None, dns: None, tls: Some(TlsFlow { server_name }), kafka: None };
    context.flows.publish(answered, flow);
    if let Some(reason) = denial {
        info!(client = %ends.client, destination = %ends.destination, %reason, "TLS connection denied");
        return reset(client);
    }
    let mut upstream = match connect(ends).await {
        Ok(upstream) => upstream,
        Err(e) => {
            debug!(client = %ends.client, destination = %ends.destination, "TLS proxy upstream: {e}");
            return reset(client);
        }
    };
    if upstream.write_all(&read).await.is_err() {
        return reset(client);
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        debug!(client = %ends.client, destination = %ends.destination, "TLS proxy connection: {e}");
    }
}

/// Closes the connection with a reset (`SO_LINGER` 0), as Envoy refuses a connection.
fn reset(client: TcpStream) {
    let _ = SockRef::from(&client).set_linger(Some(Duration::ZERO));
    drop(client);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello body with `extensions` (each `(type, data)`), or none at all.
    fn body(extensions: Option<&[(u16, Vec<u8>)]>) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7; 32]);
        body.extend([0]); // no session id
        body.extend([0, 2, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
        body.extend([1, 0]); // null compression
        if let Some(extensions) = extensions {
            let mut all = Vec::new();
            for (kind, data) in extensions {
                all.extend(kind.to_be_bytes());
                all.extend((data.len() as u16).to_be_bytes());
                all.extend(data);
            }
            body.extend((all.len() as u16).to_be_bytes());
            body.extend(all);
        }
        body
    }

    fn sni(names: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for (kind, name) in names {
            list.push(*kind);
            list.extend((name.len() as u16).to_be_bytes());
            list.extend(*name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        (SERVER_NAME, data)
    }

    /// `body` as a ClientHello handshake message in records of at most `fragment` bytes.
    fn records(body: &[u8], fragment: usize) -> Vec<u8> {
        let mut handshake = vec![CLIENT_HELLO];
        handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend(body);
        let mut out = Vec::new();
        for chunk in handshake.chunks(fragment) {
            out.extend([HANDSHAKE, 3, 1]);
            out.extend((chunk.len() as u16).to_be_bytes());
            out.extend(chunk);
        }
        out
    }

    fn hello(name: &str) -> Vec<u8> {
        records(&body(Some(&[(10, vec![0, 2, 0, 29]), sni(&[(0, name.as_bytes())])])), MAX_RECORD)
    }

    #[test]
    fn the_server_name_of_a_client_hello_lower_case_without_the_root_dot() {
        let complete = |name: &str| ClientHello::Complete(Some(name.into()));
        assert_eq!(parse_client_hello(&hello("api.example.com")), complete("api.example.com"));
        assert_eq!(parse_client_hello(&hello("API.Example.com.")), complete("api.example.com"));
        // Split over records of 7 bytes: the handshake message is reassembled.
        let split = records(&body(Some(&[sni(&[(0, b"a.example.org")])])), 7);
        assert_eq!(parse_client_hello(&split), complete("a.example.org"));
        // Names of other types are skipped.
        let other = records(&body(Some(&[sni(&[(1, b"x"), (0, b"b.example.org")])])), MAX_RECORD);
        assert_eq!(parse_client_hello(&other), complete("b.example.org"));
    }

    #[test]
    fn a_client_hello_without_a_server_name_is_complete_with_none() {
        assert_eq!(parse_client_hello(&records(&body(None), MAX_RECORD)), ClientHello::Complete(None));
        let no_sni = records(&body(Some(&[(10, vec![0, 2, 0, 29])])), MAX_RECORD);
        assert_eq!(parse_client_hello(&no_sni), ClientHello::Complete(None));
    }

    #[test]
    fn every_prefix_of_a_client_hello_is_incomplete() {
        let whole = hello("api.example.com");
        for end in 0..whole.len() {
            assert_eq!(parse_client_hello(&whole[..end]), ClientHello::Incomplete, "{end} bytes");
        }
        let split = records(&body(Some(&[sni(&[(0, b"a.example.org")])])), 5);
        for end in 0..split.len() {
            assert_eq!(parse_client_hello(&split[..end]), ClientHello::Incomplete, "{end} bytes");
        }
    }

    #[test]
    fn other_protocols_and_hostile_client_hellos_are_invalid() {
        let invalid = |bytes: &[u8]| matches!(parse_client_hello(bytes), ClientHello::Invalid(_));
        assert!(invalid(b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n"));
        assert!(invalid(b"\x16\x02"), "SSL 2 or garbage");
        assert!(invalid(&[HANDSHAKE, 3, 1, 0, 0]), "an empty record");
        assert!(invalid(&[HANDSHAKE, 3, 1, 0x48, 0x01]), "a record over 16 KiB");
        // A ServerHello, not a ClientHello.
        let mut server_hello = hello("api.example.com");
        server_hello[5] = 2;
        assert!(invalid(&server_hello));
        // A handshake length past the limit.
        assert!(invalid(&[HANDSHAKE, 3, 1, 0, 4, CLIENT_HELLO, 0xff, 0xff, 0xff]));
        // Lengths that overrun what holds them, at every length field of the body.
        let good = body(Some(&[sni(&[(0, b"api.example.com")])]));
        for at in [34, 36, 39, 41, 42, 46, 47, 48, 51] {
            let mut bad = good.clone();
            bad[at] = 0xff;
            assert!(invalid(&records(&bad, MAX_RECORD)), "byte {at}");
        }
        // Bytes after the extensions, two server_name extensions, two host names, bad names.
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(invalid(&records(&trailing, MAX_RECORD)));
        let twice = body(Some(&[sni(&[(0, b"a.example.com")]), sni(&[(0, b"b.example.com")])]));
        assert!(invalid(&records(&twice, MAX_RECORD)));
        let two_names = body(Some(&[sni(&[(0, b"a.example.com"), (0, b"b.example.com")])]));
        assert!(invalid(&records(&two_names, MAX_RECORD)));
        for name in [&b""[..], b"a..example.com", b"a\0.example.com", b"\xc3\xa9.example.com", b"."] {
            let bad = body(Some(&[sni(&[(0, name)])]));
            assert!(invalid(&records(&bad, MAX_RECORD)), "{name:?}");
        }
        // A record that is not a handshake after the first one.
        let mut mixed = records(&body(Some(&[sni(&[(0, b"a.example.org")])])), 7);
        mixed[12] = 23;
        assert!(invalid(&mixed));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x2545f4914f6cdd1du64;
        let whole = hello("api.example.com");
        for round in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = whole.clone();
            let flips = 1 + (state % 4) as usize;
            for i in 0..flips {
                let at = ((state >> (8 * i)) as usize) % bytes.len();
                bytes[at] = (state >> (3 * i)) as u8;
            }
            bytes.truncate(((state >> 40) as usize) % (whole.len() + 1));
            let _ = parse_client_hello(&bytes);
            if round % 2 == 0 {
                let _ = server_name(&bytes);
            }
        }
    }
}
