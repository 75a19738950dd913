//! Kafka on local mode's Kafka pods (`palisade.dev/kafka-ports`): a broker that speaks enough of
//! the protocol for a client's first steps (ApiVersions, Metadata, Produce, Fetch; anything else
//! closes the connection), and the one exchange of `palisade local probe --kafka`. It stores
//! nothing: a produce is acknowledged, a fetch answered with no records.
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, FetchRequest, FetchResponse, MetadataRequest,
    MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName, fetch_response,
    produce_response,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::in_netns;
use crate::probe::Outcome;
use crate::responders::IDLE_TIMEOUT;

/// The longest request the broker reads.
const MAX_FRAME: usize = 1 << 20;

/// The versions the broker answers, each API key's lowest and highest: versions that name
/// topics by name.
const VERSIONS: [(ApiKey, i16, i16); 4] =
    [(ApiKey::Produce, 3, 9), (ApiKey::Fetch, 4, 12), (ApiKey::Metadata, 0, 12), (ApiKey::ApiVersions, 0, 3)];

/// The versions the probe sends.
const PRODUCE_VERSION: i16 = 8;
const FETCH_VERSION: i16 = 11;
const API_VERSIONS_VERSION: i16 = 3;

/// A Kafka error code's name as Kafka writes it (`TOPIC_AUTHORIZATION_FAILED`), `NONE` for 0.
pub fn error_name(code: i16) -> String {
    let Some(error) = ResponseError::try_from_code(code) else { return "NONE".into() };
    let mut name = String::new();
    for c in error.to_string().chars() {
        if c.is_ascii_uppercase() && !name.is_empty() {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    if matches!(error, ResponseError::Unknown(_)) { format!("UNKNOWN_ERROR_{code}") } else { name }
}

/// Encodes a frame: its length, then `header` at `header_version` and `body` at `version`.
fn frame(header: &impl Encodable, header_version: i16, body: &impl Encodable, version: i16) -> io::Result<Vec<u8>> {
    let invalid = |e: anyhow::Error| io::Error::new(ErrorKind::InvalidData, e.to_string());
    let mut out = BytesMut::new();
    out.extend_from_slice(&[0; 4]);
    header.encode(&mut out, header_version).map_err(invalid)?;
    body.encode(&mut out, version).map_err(invalid)?;
    let length = u32::try_from(out.len() - 4).map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
    out[..4].copy_from_slice(&length.to_be_bytes());
    Ok(out.to_vec())
}

/// Serves Kafka on `listener` until the runtime stops.
pub(crate) async fn serve(listener: tokio::net::TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(broker(stream));
    }
}

/// One client connection: a response to each request, in order, until it closes or idles.
async fn broker(mut stream: tokio::net::TcpStream) -> io::Result<()> {
    let local = stream.local_addr()?;
    loop {
        let mut length = [0; 4];
        match tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut length)).await {
            Ok(read) => read?,
            Err(_) => return Ok(()),
        };
        let length = usize::try_from(u32::from_be_bytes(length)).unwrap_or(usize::MAX);
        if length > MAX_FRAME {
            return Err(io::Error::new(ErrorKind::InvalidData, "a request too long"));
        }
        let mut request = vec![0; length];
        stream.read_exact(&mut request).await?;
        match answer(request.into(), local)? {
            Some(response) => stream.write_all(&response).await?,
            None => continue,
        }
    }
}

/// The response frame to one request frame; `None` for a produce with `acks: 0`; an error (the
/// connection closes) for what the broker does not speak.
fn answer(mut request: Bytes, local: SocketAddr) -> io::Result<Option<Vec<u8>>> {
    let unsupported = |what: String| io::Error::new(ErrorKind::Unsupported, what);
    let invalid = |e: anyhow::Error| io::Error::new(ErrorKind::InvalidData, e.to_string());
    let &[k0, k1, v0, v1, ..] = &request[..] else { return Err(unsupported("a request too short".into())) };
    let (key, version) = (i16::from_be_bytes([k0, k1]), i16::from_be_bytes([v0, v1]));
    let api_key = ApiKey::try_from(key).map_err(|_| unsupported(format!("API key {key}")))?;
    if !VERSIONS.iter().any(|(k, min, max)| *k == api_key && (*min..=*max).contains(&version)) {
        return Err(unsupported(format!("{api_key:?} v{version}")));
    }
    let header = RequestHeader::decode(&mut request, api_key.request_header_version(version)).map_err(invalid)?;
    let response_header = ResponseHeader::default().with_correlation_id(header.correlation_id);
    let header_version = api_key.response_header_version(version);
    match api_key {
        ApiKey::ApiVersions => {
            let keys = VERSIONS.iter().map(|&(key, min, max)| {
                ApiVersion::default().with_api_key(key as i16).with_min_version(min).with_max_version(max)
            });
            let body = ApiVersionsResponse::default().with_api_keys(keys.collect());
            frame(&response_header, header_version, &body, version).map(Some)
        }
        ApiKey::Metadata => {
            let request = MetadataRequest::decode(&mut request, version).map_err(invalid)?;
            let broker = MetadataResponseBroker::default()
                .with_node_id(BrokerId(0))
                .with_host(StrBytes::from_string(local.ip().to_string()))
                .with_port(i32::from(local.port()));
            let topics = request.topics.iter().flatten().map(|t| {
                let partition = MetadataResponsePartition::default()
                    .with_partition_index(0)
                    .with_leader_id(BrokerId(0))
                    .with_replica_nodes(vec![BrokerId(0)])
                    .with_isr_nodes(vec![BrokerId(0)]);
                MetadataResponseTopic::default().with_name(t.name.clone()).with_partitions(vec![partition])
            });
            let body = MetadataResponse::default()
                .with_brokers(vec![broker])
                .with_controller_id(BrokerId(0))
                .with_topics(topics.collect());
            frame(&response_header, header_version, &body, version).map(Some)
        }
        ApiKey::Produce => {
            let request = ProduceRequest::decode(&mut request, version).map_err(invalid)?;
            if request.acks == 0 {
                return Ok(None);
            }
            let topics = request.topic_data.iter().map(|t| {
                let partitions = t.partition_data.iter().map(|p| {
                    produce_response::PartitionProduceResponse::default().with_index(p.index).with_base_offset(0)
                });
                produce_response::TopicProduceResponse::default()
                    .with_name(t.name.clone())
                    .with_partition_responses(partitions.collect())
            });
            let body = ProduceResponse::default().with_responses(topics.collect());
            frame(&response_header, header_version, &body, version).map(Some)
        }
        ApiKey::Fetch => {
            let request = FetchRequest::decode(&mut request, version).map_err(invalid)?;
            let topics = request.topics.iter().map(|t| {
                let partitions = t.partitions.iter().map(|p| {
                    fetch_response::PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_high_watermark(0)
                        .with_records(Some(Bytes::new()))
                });
                fetch_response::FetchableTopicResponse::default()
                    .with_topic(t.topic.clone())
                    .with_partitions(partitions.collect())
            });
            let body = FetchResponse::default().with_responses(topics.collect());
            frame(&response_header, header_version, &body, version).map(Some)
        }
        _ => Err(unsupported(format!("{api_key:?}"))),
    }
}

/// What `probe --kafka` asks: to produce one record to a topic, or to fetch from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaProbe {
    pub produce: bool,
    pub topic: String,
}

impl KafkaProbe {
    /// `produce:TOPIC` or `consume:TOPIC`.
    pub fn parse(text: &str) -> Result<KafkaProbe, String> {
        match text.split_once(':') {
            Some((role @ ("produce" | "consume"), topic)) if !topic.is_empty() => {
                Ok(KafkaProbe { produce: role == "produce", topic: topic.to_string() })
            }
            _ => Err(format!("{text:?} is not produce:TOPIC or consume:TOPIC")),
        }
    }
}

/// What the probe's exchange got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KafkaOutcome {
    /// The request was answered with this error code for the topic (0: it succeeded), and the
    /// connection still answered an ApiVersions request after it (`still_open`).
    Answered { code: i16, still_open: bool, time: Duration },
    /// The connection closed, or was reset, before an answer.
    Closed,
    /// The connection itself failed: refused, timed out or unreachable.
    Failed(Outcome),
}

impl KafkaOutcome {
    pub fn passed(&self) -> bool {
        matches!(self, KafkaOutcome::Answered { code: 0, .. })
    }
}

impl std::fmt::Display for KafkaOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KafkaOutcome::Answered { code, still_open, time } => {
                let after = if *still_open { "connection still open" } else { "connection closed after it" };
                write!(f, "{} ({:.1} ms; {after})", error_name(*code), time.as_secs_f64() * 1000.0)
            }
            KafkaOutcome::Closed => f.write_str("connection closed without an answer"),
            KafkaOutcome::Failed(outcome) => write!(f, "{outcome}"),
        }
    }
}

/// Connects from inside `netns` to `to:port`, sends the Produce (one record) or Fetch of
/// `probe` and reads its answer, then an ApiVersions request to see whether the connection is
/// still usable. Errors are failures to try at all.
pub fn probe(
    netns: &str,
    to: impl Into<IpAddr>,
    port: u16,
    probe: &KafkaProbe,
    timeout: Duration,
) -> io::Result<KafkaOutcome> {
    let (to, probe) = (to.into(), probe.clone());
    in_netns(netns, move || probe_here(SocketAddr::from((to, port)), &probe, timeout))?
}

fn header(key: ApiKey, version: i16, correlation_id: i32) -> RequestHeader {
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("palisade-probe")))
}

/// The probe's request frame and the API key and version of its response.
fn request(probe: &KafkaProbe) -> io::Result<(Vec<u8>, ApiKey, i16)> {
    let name = TopicName(StrBytes::from_string(probe.topic.clone()));
    if probe.produce {
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 0,
            key: None,
            value: Some(Bytes::from_static(b"palisade-probe")),
            headers: Default::default(),
        };
        let mut records = BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        RecordBatchEncoder::encode(&mut records, [&record], &options)
            .map_err(|e| io::Error::new(ErrorKind::InvalidData, e.to_string()))?;
        let partition = PartitionProduceData::default().with_index(0).with_records(Some(records.freeze()));
        let topic = TopicProduceData::default().with_name(name).with_partition_data(vec![partition]);
        let body = ProduceRequest::default().with_acks(1).with_timeout_ms(5000).with_topic_data(vec![topic]);
        let key = ApiKey::Produce;
        let frame = frame(
            &header(key, PRODUCE_VERSION, 1),
            key.request_header_version(PRODUCE_VERSION),
            &body,
            PRODUCE_VERSION,
        )?;
        Ok((frame, key, PRODUCE_VERSION))
    } else {
        let partition =
            FetchPartition::default().with_partition(0).with_fetch_offset(0).with_partition_max_bytes(1 << 20);
        let topic = FetchTopic::default().with_topic(name).with_partitions(vec![partition]);
        let body = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(100)
            .with_min_bytes(0)
            .with_max_bytes(1 << 20)
            .with_topics(vec![topic]);
        let key = ApiKey::Fetch;
        let frame =
            frame(&header(key, FETCH_VERSION, 1), key.request_header_version(FETCH_VERSION), &body, FETCH_VERSION)?;
        Ok((frame, key, FETCH_VERSION))
    }
}

/// Reads one response frame; `None` when the connection closed or was reset first.
fn read_response(stream: &mut TcpStream) -> io::Result<Option<Bytes>> {
    let mut length = [0; 4];
    match stream.read_exact(&mut length) {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset) => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = usize::try_from(u32::from_be_bytes(length)).unwrap_or(usize::MAX).min(MAX_FRAME * 64);
    let mut response = vec![0; length];
    match stream.read_exact(&mut response) {
        Ok(()) => Ok(Some(response.into())),
        Err(e) if matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The error code of the probe's topic in a Produce or Fetch response.
fn topic_error(mut response: Bytes, key: ApiKey, version: i16) -> io::Result<i16> {
    let invalid = |e: anyhow::Error| io::Error::new(ErrorKind::InvalidData, e.to_string());
    let header = ResponseHeader::decode(&mut response, key.response_header_version(version)).map_err(invalid)?;
    if header.correlation_id != 1 {
        return Err(io::Error::new(ErrorKind::InvalidData, format!("correlation id {}", header.correlation_id)));
    }
    let codes: Vec<i16> = if key == ApiKey::Produce {
        let body = ProduceResponse::decode(&mut response, version).map_err(invalid)?;
        body.responses.iter().flat_map(|t| t.partition_responses.iter().map(|p| p.error_code)).collect()
    } else {
        let body = FetchResponse::decode(&mut response, version).map_err(invalid)?;
        let partitions = body.responses.iter().flat_map(|t| t.partitions.iter().map(|p| p.error_code));
        std::iter::once(body.error_code).chain(partitions).collect()
    };
    Ok(codes.into_iter().find(|&c| c != 0).unwrap_or(0))
}

fn probe_here(to: SocketAddr, probe: &KafkaProbe, timeout: Duration) -> io::Result<KafkaOutcome> {
    let start = Instant::now();
    let mut stream = match TcpStream::connect_timeout(&to, timeout) {
        Ok(stream) => stream,
        Err(e) => {
            return match e.kind() {
                ErrorKind::ConnectionRefused => Ok(KafkaOutcome::Failed(Outcome::Refused)),
                ErrorKind::TimedOut | ErrorKind::WouldBlock => Ok(KafkaOutcome::Failed(Outcome::TimedOut)),
                ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                    Ok(KafkaOutcome::Failed(Outcome::Unreachable))
                }
                _ => Err(e),
            };
        }
    };
    stream.set_read_timeout(Some(timeout.saturating_sub(start.elapsed()).max(Duration::from_millis(1))))?;
    let (frame, key, version) = request(probe)?;
    let timed_out = |e: &io::Error| matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock);
    let response = match stream.write_all(&frame).and_then(|()| read_response(&mut stream)) {
        Ok(Some(response)) => response,
        Ok(None) => return Ok(KafkaOutcome::Closed),
        Err(e) if timed_out(&e) => return Ok(KafkaOutcome::Failed(Outcome::TimedOut)),
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
            return Ok(KafkaOutcome::Closed);
        }
        Err(e) => return Err(e),
    };
    let time = start.elapsed();
    let code = topic_error(response, key, version)?;
    // The same connection once more: a denial must leave it usable.
    let again = api_versions_request()?;
    let still_open = stream.write_all(&again).and_then(|()| read_response(&mut stream)).is_ok_and(|r| r.is_some());
    Ok(KafkaOutcome::Answered { code, still_open, time })
}

fn api_versions_request() -> io::Result<Vec<u8>> {
    let key = ApiKey::ApiVersions;
    let body = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("palisade-probe"))
        .with_client_software_version(StrBytes::from_static_str("1"));
    frame(
        &header(key, API_VERSIONS_VERSION, 2),
        key.request_header_version(API_VERSIONS_VERSION),
        &body,
        API_VERSIONS_VERSION,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddr {
        "10.200.0.5:9092".parse().unwrap()
    }

    #[test]
    fn the_broker_acknowledges_the_probes_produce_and_fetch() {
        for probe in [KafkaProbe::parse("produce:orders").unwrap(), KafkaProbe::parse("consume:orders").unwrap()] {
            let (frame, key, version) = request(&probe).unwrap();
            let response = answer(Bytes::from(frame[4..].to_vec()), local()).unwrap().unwrap();
            assert_eq!(u32::from_be_bytes(response[..4].try_into().unwrap()) as usize, response.len() - 4);
            assert_eq!(topic_error(Bytes::from(response[4..].to_vec()), key, version).unwrap(), 0, "{probe:?}");
        }
        let versions = api_versions_request().unwrap();
        assert!(answer(Bytes::from(versions[4..].to_vec()), local()).unwrap().is_some());
    }

    #[test]
    fn other_requests_and_versions_close_the_connection() {
        let (mut frame, _, _) = request(&KafkaProbe::parse("produce:orders").unwrap()).unwrap();
        frame[6..8].copy_from_slice(&2i16.to_be_bytes());
        assert!(answer(Bytes::from(frame[4..].to_vec()), local()).is_err(), "produce v2");
        frame[4..6].copy_from_slice(&12i16.to_be_bytes());
        assert!(answer(Bytes::from(frame[4..].to_vec()), local()).is_err(), "heartbeat");
        assert!(answer(Bytes::from_static(&[0, 0]), local()).is_err());
    }

    #[test]
    fn error_codes_are_named_as_kafka_names_them() {
        assert_eq!(error_name(29), "TOPIC_AUTHORIZATION_FAILED");
        assert_eq!(error_name(0), "NONE");
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(-100), "UNKNOWN_ERROR_-100");
        assert!(KafkaProbe::parse("publish:orders").is_err() && KafkaProbe::parse("consume:").is_err());
    }
}
