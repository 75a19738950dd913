//! DNS pods (`palisade.dev/dns-records`): a server on 53/UDP and 53/TCP that answers A queries
//! for its names, and the one-shot query of `palisade local probe --dns`.
use std::collections::BTreeMap;
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::annotations::dns_record;
use crate::net::in_netns;
use crate::probe::Outcome;

/// The port DNS pods serve and probes ask.
pub const DNS_PORT: u16 = 53;

/// A DNS pod's names (lower case, no root dot) and their addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsZone {
    pub records: BTreeMap<String, Vec<Ipv4Addr>>,
    pub ttl: u32,
}

impl DnsZone {
    /// `"name=ip, name=ip"` (a name may be listed more than once, for more addresses).
    pub fn parse(list: &str, ttl: u32) -> Result<DnsZone, String> {
        let mut records: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for entry in list.split(',').map(str::trim) {
            let (name, ip) = dns_record(entry)?;
            let ips = records.entry(name).or_default();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        Ok(DnsZone { records, ttl })
    }

    /// The response to one query message; `None` for what is not a query at all.
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let query = Message::from_vec(query).ok()?;
        if query.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut response = Message::response(query.metadata.id, query.metadata.op_code);
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        response.metadata.authoritative = true;
        response.add_queries(query.queries.iter().cloned());
        match query.queries.as_slice() {
            [question] if query.metadata.op_code == OpCode::Query => {
                let name = question.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
                match self.records.get(&name) {
                    None => response.metadata.response_code = ResponseCode::NXDomain,
                    Some(ips) if question.query_type() == RecordType::A => {
                        for ip in ips {
                            response.add_answer(Record::from_rdata(
                                question.name().clone(),
                                self.ttl,
                                RData::A(A(*ip)),
                            ));
                        }
                    }
                    // The name exists, without records of that type.
                    Some(_) => {}
                }
            }
            _ => response.metadata.response_code = ResponseCode::NotImp,
        }
        response.to_vec().ok()
    }
}

/// Serves `zone` on a bound UDP socket until the runtime stops.
pub(crate) async fn serve_udp(socket: tokio::net::UdpSocket, zone: Arc<DnsZone>, name: String) {
    let mut buf = [0; 65536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                if let Some(reply) = zone.answer(&buf[..n]) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
            // ICMP errors for earlier replies surface here; the socket still works.
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::Interrupted) => {}
            Err(e) => {
                eprintln!("responder {name}: receive: {e}");
                return;
            }
        }
    }
}

/// Serves `zone` on a TCP listener until the runtime stops: length-prefixed messages, several
/// on one connection.
pub(crate) async fn serve_tcp(listener: tokio::net::TcpListener, zone: Arc<DnsZone>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let zone = zone.clone();
        tokio::spawn(async move {
            let idle = crate::responders::IDLE_TIMEOUT;
            while let Ok(Ok(length)) = tokio::time::timeout(idle, stream.read_u16()).await {
                let mut query = vec![0; length as usize];
                if stream.read_exact(&mut query).await.is_err() {
                    return;
                }
                let Some(reply) = zone.answer(&query) else { return };
                let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&reply);
                if stream.write_all(&framed).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// What a DNS query got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// NOERROR, with the A records' addresses (none when the name has no A record).
    Addresses(Vec<Ipv4Addr>),
    /// Any other response code.
    Failed(ResponseCode),
    /// No DNS answer: timed out, or refused (ICMP port unreachable) or unreachable.
    NoAnswer(Outcome),
}

/// Asks the DNS server at `server` for the A records of `name` over UDP, from inside `netns`.
/// Errors are failures to ask at all (a bad name, no such namespace).
pub fn resolve(netns: &str, server: impl Into<IpAddr>, name: &str, timeout: Duration) -> io::Result<Resolved> {
    let (server, name) = (server.into(), name.to_owned());
    in_netns(netns, move || resolve_here(server, &name, timeout))?
}

/// [`resolve`] from the calling thread's namespace.
pub(crate) fn resolve_here(server: IpAddr, name: &str, timeout: Duration) -> io::Result<Resolved> {
    let name = Name::from_ascii(name)
        .map_err(|e| io::Error::new(ErrorKind::InvalidInput, format!("{name:?} is not a DNS name: {e}")))?;
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name, RecordType::A));
    let bytes = query.to_vec().map_err(io::Error::other)?;
    let id = query.metadata.id;
    let any: IpAddr = if server.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let socket = UdpSocket::bind((any, 0))?;
    socket.connect((server, DNS_PORT))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(&bytes)?;
    let mut buf = [0; 65536];
    loop {
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                return match e.kind() {
                    ErrorKind::WouldBlock | ErrorKind::TimedOut => Ok(Resolved::NoAnswer(Outcome::TimedOut)),
                    // Nothing listens on 53/UDP there.
                    ErrorKind::ConnectionRefused => Ok(Resolved::NoAnswer(Outcome::Refused)),
                    ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                        Ok(Resolved::NoAnswer(Outcome::Unreachable))
                    }
                    _ => Err(e),
                };
            }
        };
        // Another answer (a late one to an earlier query) is not ours.
        let Ok(response) = Message::from_vec(&buf[..n]) else { continue };
        if response.metadata.id != id || response.metadata.message_type != MessageType::Response {
            continue;
        }
        if response.metadata.response_code != ResponseCode::NoError {
            return Ok(Resolved::Failed(response.metadata.response_code));
        }
        let addresses = response
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        return Ok(Resolved::Addresses(addresses));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(zone: &DnsZone, name: &str, kind: RecordType) -> Message {
        let mut query = Message::query();
        query.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        let reply = zone.answer(&query.to_vec().unwrap()).expect("a query is answered");
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.id, query.metadata.id);
        reply
    }

    #[test]
    fn known_names_get_their_a_records_and_others_nxdomain() {
        let zone =
            DnsZone::parse("api.example.com=10.200.99.10, api.example.com=10.200.99.11,db.example.com=10.200.99.12", 7)
                .unwrap();
        let reply = ask(&zone, "API.example.com.", RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        let answers: Vec<(String, u32, String)> =
            reply.answers.iter().map(|r| (r.name.to_ascii(), r.ttl, r.data.to_string())).collect();
        assert_eq!(
            answers,
            [
                ("API.example.com.".into(), 7, "10.200.99.10".into()),
                ("API.example.com.".into(), 7, "10.200.99.11".into())
            ]
        );
        let aaaa = ask(&zone, "db.example.com", RecordType::AAAA);
        assert_eq!((aaaa.metadata.response_code, aaaa.answers.len()), (ResponseCode::NoError, 0));
        assert_eq!(ask(&zone, "nope.example.com", RecordType::A).metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(zone.answer(b"junk"), None);
    }

    #[test]
    fn records_must_be_names_and_ipv4_addresses() {
        assert_eq!(DnsZone::parse("api.example.com", 30).unwrap_err(), "expected NAME=IPv4");
        assert_eq!(DnsZone::parse("a..b=10.0.0.1", 30).unwrap_err(), "\"a..b\" is not a DNS name");
        assert_eq!(DnsZone::parse("a.b=::1", 30).unwrap_err(), "\"::1\" is not an IPv4 address");
    }
}
