//! One steered connection: HTTP/1.1 requests judged one by one (keep-alive), or HTTP/2 with prior
//! knowledge (h2c, as gRPC speaks it) judged stream by stream; each forwarded over one upstream
//! connection from the client's own address in the client's protocol, or answered as Envoy
//! answers a denied request: a 403, or for a gRPC call `grpc-status: 7` (PERMISSION_DENIED).
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use palisade_policy::l7::{HttpRequest, HttpRewrite, L7Request};
use socket2::Type;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tracing::{debug, info};

use super::judge::{Ends, Sides, judge};
use super::observed::Answered;
use super::{ProxyContext, upstream_socket};
use crate::observe::{HttpFlow, L7Flow};

type Body = BoxBody<Bytes, hyper::Error>;

/// What Cilium's proxy (Envoy) answers a denied request with.
const ACCESS_DENIED: &str = "Access denied\r\n";
/// gRPC's PERMISSION_DENIED, which Envoy answers a denied gRPC call with.
const GRPC_PERMISSION_DENIED: &str = "7";

/// One steered connection: its ends, its upstream (opened on first use) and its policed ends.
struct Connection {
    ends: Ends,
    upstream: Mutex<Option<Upstream>>,
    sides: Sides,
}

/// The upstream connection, in the client's protocol.
enum Upstream {
    Http1(http1::SendRequest<Incoming>),
    Http2(http2::SendRequest<Incoming>),
}

impl Upstream {
    fn is_closed(&self) -> bool {
        match self {
            Upstream::Http1(sender) => sender.is_closed(),
            Upstream::Http2(sender) => sender.is_closed(),
        }
    }
}

pub(super) async fn serve(client: TcpStream, ends: Ends, sides: Sides, context: Arc<ProxyContext>) {
    let connection = Arc::new(Connection { ends, upstream: Mutex::default(), sides });
    let service = service_fn(move |request| {
        let (context, connection) = (context.clone(), connection.clone());
        async move { Ok::<_, hyper::Error>(handle(request, &connection, &context).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    if let Err(e) = builder.serve_connection(TokioIo::new(client), service).await {
        debug!(client = %ends.client, destination = %ends.destination, "L7 proxy connection: {e}");
    }
}

async fn handle(request: Request<Incoming>, connection: &Connection, context: &ProxyContext) -> Response<Body> {
    let grpc = is_grpc(&request);
    // Without a policy (the agent has not converged yet) nothing can be judged: fail closed.
    let Some(policy) = context.policy.current() else {
        return denied(grpc);
    };
    let started = Instant::now();
    let ends = connection.ends;
    let seen = as_judged(&request);
    let version = format!("{:?}", request.version());
    let found = connection.sides.of(&policy.enforced, ends);
    let judged = judge(&policy, &found, ends, &seen, &context.diffs);
    let response = match judged.denial() {
        Some(denied) => {
            info!(client = %ends.client, destination = %ends.destination, reason = %denied.reason, "L7 request denied");
            self::denied(grpc)
        }
        None => {
            let mut request = request;
            for (verdict, _) in &judged.verdicts {
                rewrite(&mut request, &verdict.rewrite);
            }
            match forward(request, ends, &connection.upstream).await {
                Ok(response) => response.map(BodyExt::boxed),
                Err(e) => {
                    debug!(client = %ends.client, destination = %ends.destination, "L7 proxy upstream: {e}");
                    plain(StatusCode::BAD_GATEWAY, "upstream connect error\r\n")
                }
            }
        }
    };
    if let L7Request::Http(http) = seen {
        let status = response.status().as_u16();
        let http = HttpFlow { method: http.method, url: http.path, protocol: version, status };
        let answered = Answered { policy: &policy, found: &found, ends, judged: &judged, started };
        context.flows.publish(answered, L7Flow { latency_ns: 0, http: Some(http), dns: None, tls: None, kafka: None });
    }
    response
}

/// The request as the L7 rules see it: method, path (with its query, as Envoy's `:path`) and
/// headers with lower-case names.
fn as_judged(request: &Request<Incoming>) -> L7Request {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    L7Request::Http(HttpRequest { method: request.method().as_str().to_string(), path, headers })
}

/// Applies the `headerMatches` mismatch actions of the rule that allowed the request.
fn rewrite(request: &mut Request<Incoming>, rewrite: &HttpRewrite) {
    let headers = request.headers_mut();
    let parse = |name: &str, value: &str| Some((HeaderName::try_from(name).ok()?, HeaderValue::try_from(value).ok()?));
    for name in &rewrite.delete {
        headers.remove(name.as_str());
    }
    for (name, value) in &rewrite.add {
        if let Some((name, value)) = parse(name, value) {
            headers.append(name, value);
        }
    }
    for (name, value) in &rewrite.replace {
        if let Some((name, value)) = parse(name, value) {
            headers.insert(name, value);
        }
    }
    for logged in &rewrite.logged {
        info!(mismatch = %logged, "L7 request header mismatch (LOG)");
    }
}

/// Sends the request over the connection's upstream, opened on first use. HTTP/1.1 requests go
/// one after the other; HTTP/2 streams share the connection, so a long call holds up no other.
async fn forward(
    request: Request<Incoming>,
    ends: Ends,
    upstream: &Mutex<Option<Upstream>>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let mut upstream = upstream.lock().await;
    let sender = match upstream.as_mut() {
        Some(sender) if !sender.is_closed() => sender,
        _ => upstream.insert(connect(ends, request.version()).await?),
    };
    match sender {
        Upstream::Http1(sender) => {
            sender.ready().await?;
            Ok(sender.send_request(request).await?)
        }
        Upstream::Http2(sender) => {
            let mut sender = sender.clone();
            drop(upstream);
            sender.ready().await?;
            Ok(sender.send_request(request).await?)
        }
    }
}

/// An upstream connection from the client's address, in the protocol of `version`.
async fn connect(ends: Ends, version: Version) -> std::io::Result<Upstream> {
    let socket = TcpSocket::from_std_stream(upstream_socket(ends, Type::STREAM)?.into());
    let stream = TokioIo::new(socket.connect(ends.destination.into()).await?);
    stream.inner().set_nodelay(true)?;
    if version == Version::HTTP_2 {
        let (sender, connection) =
            http2::handshake(TokioExecutor::new(), stream).await.map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok(Upstream::Http2(sender))
    } else {
        let (sender, connection) = http1::handshake(stream).await.map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok(Upstream::Http1(sender))
    }
}

/// A gRPC call (`content-type: application/grpc`, `application/grpc+proto`...).
fn is_grpc(request: &Request<Incoming>) -> bool {
    request.headers().get(CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
}

/// The answer to a denied request: a gRPC call gets a trailers-only response with
/// PERMISSION_DENIED, which gRPC clients read as the call's status; anything else a 403.
fn denied(grpc: bool) -> Response<Body> {
    if !grpc {
        return plain(StatusCode::FORBIDDEN, ACCESS_DENIED);
    }
    let mut response = Response::new(http_body_util::Empty::new().map_err(|never| match never {}).boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static(GRPC_PERMISSION_DENIED));
    headers.insert("grpc-message", HeaderValue::from_static("Access denied"));
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let body = Full::new(Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
