//! One steered connection on a port whose rules are Kafka rules. The proxy reads the client's
//! requests one frame at a time (a 4-byte big-endian length, at most [`MAX_REQUEST`] bytes),
//! decodes each header and the topics its body names with the `kafka-protocol` crate, judges it
//! under the enforced and the candidate revision, and either forwards it to the original
//! destination from the client's own address and relays the response, or answers it itself as
//! Cilium's Kafka proxy does: a response of the same API key and version carrying
//! `TOPIC_AUTHORIZATION_FAILED` for every topic (and partition) it named. The connection stays
//! open for the next request. One request is in flight at a time, so responses keep the order
//! (and correlation ids) of the requests.
//!
//! What cannot be judged closes the connection: a frame too long or cut short, a header or body
//! that does not decode, a version the crate does not read (Produce before v3, Fetch before v4:
//! Kafka 4 removed them too), the inter-broker keys 4 to 7 (no longer in the protocol). A
//! denied request naming no topic (ApiVersions, group requests, a Metadata request for every
//! topic) or of another kind than Produce, Fetch, ListOffsets, Metadata, OffsetCommit and
//! OffsetFetch has no per-topic answer: the connection is closed. A denied Produce with
//! `acks: 0` gets no answer, as from a broker. Fetch sessions (KIP-227) are turned off on the
//! way upstream, so that every Fetch names all the topics it reads.
use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, DeleteTopicsRequest, FetchRequest, FetchResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
    fetch_response, list_offsets_response, metadata_response, offset_commit_response, offset_fetch_response,
    produce_response,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use palisade_policy::l7::kafka::{self as kafka_rules, api_key_text};
use palisade_policy::l7::{KafkaRequest, L7Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info};
use uuid::Uuid;

use super::judge::{Ends, Sides, judge};
use super::observed::Answered;
use super::{ProxyContext, connect};
use crate::observe::{KafkaFlow, L7Flow};

/// The longest request the proxy reads: Kafka's own `socket.request.max.bytes` is 100 MiB, but
/// a request past this is a produce batch no policy-checked client needs in one frame.
pub(super) const MAX_REQUEST: usize = 1 << 20;
/// How long the rest of a frame may take once its length arrived.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// The error code of a denied request's topics.
pub(super) const TOPIC_AUTHORIZATION_FAILED: &str = "TOPIC_AUTHORIZATION_FAILED";

/// A request frame as the proxy read it.
#[derive(Debug)]
pub(super) struct Request {
    /// What the rules judge.
    pub rules: KafkaRequest,
    pub correlation_id: i32,
    /// The decoded header and body, for a request the proxy may answer or rewrite; `None` for
    /// a key the crate does not know.
    decoded: Option<(ApiKey, RequestHeader, Body)>,
}

/// The bodies the proxy answers when denied, or rewrites (Fetch).
#[derive(Debug)]
enum Body {
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    Metadata(MetadataRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    /// Read for its topics, or not at all (a key without topics).
    Other,
}

/// How a denied request is answered.
#[derive(Debug, PartialEq)]
pub(super) enum Denial {
    /// This response frame (its length included).
    Respond(Bytes),
    /// Nothing: a Produce with `acks: 0` expects no response.
    Silent,
    /// The connection is closed: no per-topic answer exists.
    Close,
}

/// A topic as the rules see it: its name, or for a request that names it by id,
/// [`kafka_rules::topic_id`].
fn topic(name: Option<&TopicName>, id: Uuid) -> String {
    match name {
        Some(name) if !name.0.is_empty() || id.is_nil() => name.0.as_str().to_string(),
        _ => kafka_rules::topic_id(id),
    }
}

/// Reads a request frame's header and the topics of its body. An error says why it cannot be
/// judged.
pub(super) fn parse_request(frame: &Bytes) -> Result<Request, String> {
    let &[k0, k1, v0, v1, c0, c1, c2, c3, ..] = &frame[..] else {
        return Err("a request shorter than a request header".into());
    };
    let (key, version) = (i16::from_be_bytes([k0, k1]), i16::from_be_bytes([v0, v1]));
    let correlation_id = i32::from_be_bytes([c0, c1, c2, c3]);
    let Ok(api_key) = ApiKey::try_from(key) else {
        if kafka_rules::api_key_name(key).is_some() {
            return Err(format!("{}: a request whose topics the proxy cannot read", api_key_text(key)));
        }
        // Not a key Kafka rules can name: judged (denied) by its key alone.
        let rules = KafkaRequest { api_key: key, api_version: version, client_id: None, topics: Vec::new() };
        return Ok(Request { rules, correlation_id, decoded: None });
    };
    let versions = api_key.valid_versions();
    if !(versions.min..=versions.max).contains(&version) {
        return Err(format!("{} v{version}: not a version the proxy reads", api_key_text(key)));
    }
    let mut buf = frame.clone();
    let failed = |e: anyhow::Error| format!("{} v{version}: {e}", api_key_text(key));
    let header = RequestHeader::decode(&mut buf, api_key.request_header_version(version)).map_err(failed)?;
    let mut topics = BTreeSet::new();
    let body = match api_key {
        ApiKey::Produce => {
            let request = ProduceRequest::decode(&mut buf, version).map_err(failed)?;
            topics.extend(request.topic_data.iter().map(|t| topic(Some(&t.name), t.topic_id)));
            Body::Produce(request)
        }
        ApiKey::Fetch => {
            let request = FetchRequest::decode(&mut buf, version).map_err(failed)?;
            topics.extend(request.topics.iter().map(|t| topic(Some(&t.topic), t.topic_id)));
            Body::Fetch(request)
        }
        ApiKey::ListOffsets => {
            let request = ListOffsetsRequest::decode(&mut buf, version).map_err(failed)?;
            topics.extend(request.topics.iter().map(|t| topic(Some(&t.name), Uuid::nil())));
            Body::ListOffsets(request)
        }
        ApiKey::Metadata => {
            let request = MetadataRequest::decode(&mut buf, version).map_err(failed)?;
            topics.extend(request.topics.iter().flatten().map(|t| topic(t.name.as_ref(), t.topic_id)));
            Body::Metadata(request)
        }
        ApiKey::OffsetCommit => {
            let request = OffsetCommitRequest::decode(&mut buf, version).map_err(failed)?;
            topics.extend(request.topics.iter().map(|t| topic(Some(&t.name), t.topic_id)));
            Body::OffsetCommit(request)
        }
        ApiKey::OffsetFetch => {
            let request = OffsetFetchRequest::decode(&mut buf, version).map_err(failed)?;
            topics.extend(request.topics.iter().flatten().map(|t| topic(Some(&t.name), Uuid::nil())));
            let grouped = request.groups.iter().flat_map(|g| g.topics.iter().flatten());
            topics.extend(grouped.map(|t| topic(Some(&t.name), t.topic_id)));
            Body::OffsetFetch(request)
        }
        ApiKey::CreateTopics => {
            let request = CreateTopicsRequest::decode(&mut buf, version).map_err(failed)?;
            topics.extend(request.topics.iter().map(|t| topic(Some(&t.name), Uuid::nil())));
            Body::Other
        }
        ApiKey::DeleteTopics => {
            let request = DeleteTopicsRequest::decode(&mut buf, version).map_err(failed)?;
            topics.extend(request.topic_names.iter().map(|name| topic(Some(name), Uuid::nil())));
            topics.extend(request.topics.iter().map(|t| topic(t.name.as_ref(), t.topic_id)));
            Body::Other
        }
        _ => {
            // The other keys Kafka rules can name carry no topic; keys they cannot name are
            // denied whatever their body.
            buf.clear();
            Body::Other
        }
    };
    if !buf.is_empty() {
        return Err(format!("{} v{version}: {} bytes after the request", api_key_text(key), buf.len()));
    }
    let client_id = header.client_id.as_ref().map(|id| id.as_str().to_string());
    let rules = KafkaRequest { api_key: key, api_version: version, client_id, topics: topics.into_iter().collect() };
    Ok(Request { rules, correlation_id, decoded: Some((api_key, header, body)) })
}

impl Request {
    /// Whether the client waits for a response: all but a Produce with `acks: 0`.
    fn expects_response(&self) -> bool {
        !matches!(&self.decoded, Some((_, _, Body::Produce(produce))) if produce.acks == 0)
    }

    /// How a denial of this request is answered: `TOPIC_AUTHORIZATION_FAILED` for each topic
    /// and partition it named.
    pub fn denial(&self) -> Denial {
        if !self.expects_response() {
            return Denial::Silent;
        }
        let Some((api_key, _, body)) = self.decoded.as_ref().filter(|_| !self.rules.topics.is_empty()) else {
            return Denial::Close;
        };
        let code = ResponseError::TopicAuthorizationFailed.code();
        let version = self.rules.api_version;
        let encoded = match body {
            Body::Produce(request) => {
                use produce_response::{PartitionProduceResponse, TopicProduceResponse};
                let topics = request.topic_data.iter().map(|t| {
                    let partitions = t.partition_data.iter().map(|p| {
                        PartitionProduceResponse::default()
                            .with_index(p.index)
                            .with_error_code(code)
                            .with_base_offset(-1)
                    });
                    TopicProduceResponse::default()
                        .with_name(t.name.clone())
                        .with_topic_id(t.topic_id)
                        .with_partition_responses(partitions.collect())
                });
                self.response(*api_key, &ProduceResponse::default().with_responses(topics.collect()))
            }
            Body::Fetch(request) => {
                use fetch_response::{FetchableTopicResponse, PartitionData};
                let topics = request.topics.iter().map(|t| {
                    let partitions = t.partitions.iter().map(|p| {
                        PartitionData::default()
                            .with_partition_index(p.partition)
                            .with_error_code(code)
                            .with_high_watermark(-1)
                    });
                    FetchableTopicResponse::default()
                        .with_topic(t.topic.clone())
                        .with_topic_id(t.topic_id)
                        .with_partitions(partitions.collect())
                });
                self.response(*api_key, &FetchResponse::default().with_responses(topics.collect()))
            }
            Body::ListOffsets(request) => {
                use list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
                let topics = request.topics.iter().map(|t| {
                    let partitions = t.partitions.iter().map(|p| {
                        ListOffsetsPartitionResponse::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(code)
                    });
                    ListOffsetsTopicResponse::default().with_name(t.name.clone()).with_partitions(partitions.collect())
                });
                self.response(*api_key, &ListOffsetsResponse::default().with_topics(topics.collect()))
            }
            Body::Metadata(request) => {
                let topics = request.topics.iter().flatten().map(|t| {
                    metadata_response::MetadataResponseTopic::default()
                        .with_error_code(code)
                        .with_name(t.name.clone())
                        .with_topic_id(t.topic_id)
                });
                self.response(*api_key, &MetadataResponse::default().with_topics(topics.collect()))
            }
            Body::OffsetCommit(request) => {
                use offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
                let topics = request.topics.iter().map(|t| {
                    let partitions = t.partitions.iter().map(|p| {
                        OffsetCommitResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(code)
                    });
                    OffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_topic_id(t.topic_id)
                        .with_partitions(partitions.collect())
                });
                self.response(*api_key, &OffsetCommitResponse::default().with_topics(topics.collect()))
            }
            Body::OffsetFetch(request) => {
                use offset_fetch_response::{
                    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
                    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
                };
                let topics = request.topics.iter().flatten().map(|t| {
                    let partitions = t.partition_indexes.iter().map(|&i| {
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(i)
                            .with_committed_offset(-1)
                            .with_error_code(code)
                    });
                    OffsetFetchResponseTopic::default().with_name(t.name.clone()).with_partitions(partitions.collect())
                });
                let groups = request.groups.iter().map(|g| {
                    let topics = g.topics.iter().flatten().map(|t| {
                        let partitions = t.partition_indexes.iter().map(|&i| {
                            OffsetFetchResponsePartitions::default()
                                .with_partition_index(i)
                                .with_committed_offset(-1)
                                .with_error_code(code)
                        });
                        OffsetFetchResponseTopics::default()
                            .with_name(t.name.clone())
                            .with_topic_id(t.topic_id)
                            .with_partitions(partitions.collect())
                    });
                    OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone()).with_topics(topics.collect())
                });
                let response =
                    OffsetFetchResponse::default().with_topics(topics.collect()).with_groups(groups.collect());
                self.response(*api_key, &response)
            }
            Body::Other => return Denial::Close,
        };
        match encoded {
            Ok(frame) => Denial::Respond(frame),
            Err(e) => {
                debug!("Kafka proxy: cannot encode a denial of {} v{version}: {e}", api_key_text(self.rules.api_key));
                Denial::Close
            }
        }
    }

    /// A response frame to this request: length, header, `body`.
    fn response(&self, api_key: ApiKey, body: &impl Encodable) -> anyhow::Result<Bytes> {
        let version = self.rules.api_version;
        let header = ResponseHeader::default().with_correlation_id(self.correlation_id);
        frame_of((&header, api_key.response_header_version(version)), body, version)
    }

    /// The frame to forward (its length included): as read, but for a Fetch that opens or
    /// continues a fetch session, rewritten as a full fetch without one (session 0, epoch -1),
    /// so that no later Fetch reads topics it does not name.
    fn forwarded(&self, frame: Bytes) -> anyhow::Result<Bytes> {
        match &self.decoded {
            Some((api_key, header, Body::Fetch(fetch))) if fetch.session_id != 0 || fetch.session_epoch != -1 => {
                let version = header.request_api_version;
                let sessionless = fetch.clone().with_session_id(0).with_session_epoch(-1);
                frame_of((header, api_key.request_header_version(version)), &sessionless, version)
            }
            _ => {
                let mut out = BytesMut::with_capacity(frame.len() + 4);
                out.put_i32(i32::try_from(frame.len())?);
                out.put_slice(&frame);
                Ok(out.freeze())
            }
        }
    }
}

/// A frame: its length, then `header` at its header version, then `body` at `version`.
fn frame_of(header: (&impl Encodable, i16), body: &impl Encodable, version: i16) -> anyhow::Result<Bytes> {
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    header.0.encode(&mut frame, header.1)?;
    body.encode(&mut frame, version)?;
    let length = i32::try_from(frame.len() - 4)?;
    frame[..4].copy_from_slice(&length.to_be_bytes());
    Ok(frame.freeze())
}

/// Reads one frame of at most `max` bytes: `Ok(None)` when the peer closed between frames; an
/// error for a frame longer than `max`, a negative length, or a frame cut short.
pub(super) async fn read_frame(reader: &mut (impl AsyncRead + Unpin), max: usize) -> io::Result<Option<Bytes>> {
    let mut length = [0; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = usize::try_from(i32::from_be_bytes(length))
        .ok()
        .filter(|&l| l <= max)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("a frame longer than {max} bytes")))?;
    let mut frame = vec![0; length];
    match tokio::time::timeout(FRAME_TIMEOUT, reader.read_exact(&mut frame)).await {
        Ok(Ok(_)) => Ok(Some(frame.into())),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "a frame not finished in time")),
    }
}

/// Relays one response frame from `upstream` to `client` without holding it whole: a Fetch
/// response may be tens of megabytes.
async fn relay_response(upstream: &mut TcpStream, client: &mut TcpStream) -> io::Result<()> {
    let mut length = [0; 4];
    upstream.read_exact(&mut length).await?;
    let size = u64::try_from(i32::from_be_bytes(length))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a response of negative length"))?;
    client.write_all(&length).await?;
    let copied = tokio::io::copy(&mut (&mut *upstream).take(size), client).await?;
    if copied != size {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a response cut short"));
    }
    Ok(())
}

pub(super) async fn serve(mut client: TcpStream, ends: Ends, sides: Sides, context: Arc<ProxyContext>) {
    let mut upstream: Option<TcpStream> = None;
    let closed = |why: &dyn std::fmt::Display| {
        debug!(client = %ends.client, destination = %ends.destination, "Kafka proxy: {why}; connection closed");
    };
    loop {
        let frame = match read_frame(&mut client, MAX_REQUEST).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e) => return closed(&e),
        };
        let started = Instant::now();
        let request = match parse_request(&frame) {
            Ok(request) => request,
            Err(why) => {
                info!(client = %ends.client, destination = %ends.destination, "Kafka request not judged: {why}; connection closed");
                return;
            }
        };
        // Without a policy (the agent has not converged yet) nothing can be judged: fail closed.
        let Some(policy) = context.policy.current() else { return };
        let l7 = L7Request::Kafka(request.rules.clone());
        let found = sides.of(&policy.enforced, ends);
        let judged = judge(&policy, &found, ends, &l7, &context.diffs);
        let denial = judged.denial().map(|_| request.denial());
        let flow = KafkaFlow {
            api_key: api_key_text(request.rules.api_key),
            api_version: request.rules.api_version,
            correlation_id: request.correlation_id,
            client_id: request.rules.client_id.clone(),
            topics: request.rules.topics.clone(),
            error: matches!(denial, Some(Denial::Respond(_))).then(|| TOPIC_AUTHORIZATION_FAILED.to_string()),
        };
        let answered = Answered { policy: &policy, found: &found, ends, judged: &judged, started };
        context.flows.publish(answered, L7Flow { latency_ns: 0, http: None, dns: None, tls: None, kafka: Some(flow) });
        match denial {
            Some(Denial::Respond(response)) => {
                if let Err(e) = client.write_all(&response).await {
                    return closed(&e);
                }
                continue;
            }
            Some(Denial::Silent) => continue,
            Some(Denial::Close) => return closed(&format!("denied {}", request.rules.describe())),
            None => {}
        }
        let forwarded = match request.forwarded(frame) {
            Ok(forwarded) => forwarded,
            Err(e) => return closed(&e),
        };
        if upstream.is_none() {
            match connect(ends).await {
                Ok(connection) => upstream = Some(connection),
                Err(e) => return closed(&e),
            }
        }
        let Some(connection) = upstream.as_mut() else { return };
        if let Err(e) = connection.write_all(&forwarded).await {
            return closed(&e);
        }
        if request.expects_response()
            && let Err(e) = relay_response(connection, &mut client).await
        {
            return closed(&e);
        }
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiVersionsRequest, fetch_request};
    use kafka_protocol::protocol::StrBytes;

    use super::*;

    /// A request frame without its length: `header` then `body`, at `version`.
    fn frame(key: ApiKey, version: i16, correlation_id: i32, body: &impl Encodable) -> Bytes {
        let mut out = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("app")))
            .encode(&mut out, key.request_header_version(version))
            .unwrap();
        body.encode(&mut out, version).unwrap();
        out.freeze()
    }

    fn produce(topics: &[&str], acks: i16) -> ProduceRequest {
        let topics = topics.iter().map(|t| {
            TopicProduceData::default().with_name(TopicName(StrBytes::from_string(t.to_string()))).with_partition_data(
                vec![PartitionProduceData::default().with_index(0).with_records(Some(Bytes::new()))],
            )
        });
        ProduceRequest::default().with_acks(acks).with_timeout_ms(1000).with_topic_data(topics.collect())
    }

    #[test]
    fn a_produce_request_names_its_topics_and_client() {
        let request = parse_request(&frame(ApiKey::Produce, 7, 42, &produce(&["orders", "audit"], 1))).unwrap();
        assert_eq!(
            request.rules,
            KafkaRequest {
                api_key: 0,
                api_version: 7,
                client_id: Some("app".into()),
                topics: vec!["audit".into(), "orders".into()],
            }
        );
        assert_eq!(request.correlation_id, 42);
        let acks0 = parse_request(&frame(ApiKey::Produce, 7, 43, &produce(&["orders"], 0))).unwrap();
        assert_eq!(acks0.denial(), Denial::Silent);
    }

    #[test]
    fn a_denied_produce_is_answered_topic_authorization_failed_with_its_correlation_id() {
        let request = parse_request(&frame(ApiKey::Produce, 9, 7, &produce(&["secret"], -1))).unwrap();
        let Denial::Respond(response) = request.denial() else { panic!("no response") };
        let mut body = response.slice(4..);
        assert_eq!(i32::from_be_bytes(response[..4].try_into().unwrap()) as usize, body.len());
        let header = ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(9)).unwrap();
        assert_eq!(header.correlation_id, 7);
        let decoded = ProduceResponse::decode(&mut body, 9).unwrap();
        assert_eq!(decoded.responses.len(), 1);
        assert_eq!(decoded.responses[0].name.0.as_str(), "secret");
        assert_eq!(decoded.responses[0].partition_responses[0].error_code, 29);
        assert!(body.is_empty());
    }

    #[test]
    fn a_denied_request_without_topics_closes_the_connection() {
        let versions = parse_request(&frame(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default())).unwrap();
        assert_eq!((versions.rules.api_key, versions.rules.topics.len()), (18, 0));
        assert_eq!(versions.denial(), Denial::Close);
        // A key Kafka rules cannot name: judged by its key (and denied), answered by closing.
        let mut unknown = frame(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default()).to_vec();
        unknown[..2].copy_from_slice(&22i16.to_be_bytes());
        let unknown = parse_request(&unknown.into()).unwrap();
        assert_eq!((unknown.rules.api_key, unknown.denial()), (22, Denial::Close));
    }

    #[test]
    fn fetch_sessions_are_turned_off_upstream() {
        let topic = fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("orders")))
            .with_partitions(vec![fetch_request::FetchPartition::default()]);
        let fetch = FetchRequest::default().with_session_id(5).with_session_epoch(3).with_topics(vec![topic]);
        let request = parse_request(&frame(ApiKey::Fetch, 12, 1, &fetch)).unwrap();
        assert_eq!(request.rules.topics, ["orders"]);
        let forwarded = request.forwarded(frame(ApiKey::Fetch, 12, 1, &fetch)).unwrap();
        let again = parse_request(&forwarded.slice(4..)).unwrap();
        let Some((_, _, Body::Fetch(sent))) = again.decoded else { panic!("not a fetch") };
        assert_eq!((sent.session_id, sent.session_epoch, again.rules.topics), (0, -1, vec!["orders".to_string()]));
    }

    #[test]
    fn truncated_and_hostile_frames_are_refused_never_panicking() {
        let whole = frame(ApiKey::Produce, 9, 1, &produce(&["orders"], 1));
        for end in 0..whole.len() {
            assert!(parse_request(&whole.slice(..end)).is_err(), "{end} bytes");
        }
        let mut trailing = whole.to_vec();
        trailing.push(0);
        assert!(parse_request(&trailing.into()).is_err());
        let mut old = whole.to_vec();
        old[2..4].copy_from_slice(&2i16.to_be_bytes());
        assert_eq!(parse_request(&old.into()).unwrap_err(), "produce v2: not a version the proxy reads");
        let mut broker = whole.to_vec();
        broker[..2].copy_from_slice(&4i16.to_be_bytes());
        assert!(parse_request(&broker.into()).is_err(), "leaderandisr: its topics cannot be read");
        let mut state = 0x2545f4914f6cdd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = whole.to_vec();
            for i in 0..1 + (state % 4) as usize {
                let at = ((state >> (8 * i)) as usize) % bytes.len();
                bytes[at] = (state >> (3 * i)) as u8;
            }
            bytes.truncate(((state >> 40) as usize) % (whole.len() + 1));
            if let Ok(request) = parse_request(&bytes.into()) {
                let _ = request.denial();
            }
        }
    }

    #[tokio::test]
    async fn frames_are_bounded_and_must_be_whole() {
        let read = |bytes: Vec<u8>| async move { read_frame(&mut bytes.as_slice(), 16).await };
        assert_eq!(read(vec![0, 0, 0, 2, 7, 8]).await.unwrap(), Some(Bytes::from_static(&[7, 8])));
        assert_eq!(read(Vec::new()).await.unwrap(), None, "closed between frames");
        assert_eq!(read(vec![0, 0, 0, 17]).await.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(read(vec![0xff, 0xff, 0xff, 0xff]).await.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(read(vec![0, 0, 0, 4, 1, 2]).await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
