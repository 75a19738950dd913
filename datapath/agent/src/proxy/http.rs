//! One steered connection: HTTP/1.1 requests judged one by one (keep-alive), each forwarded
//! over one upstream connection from the client's own address, or answered with a 403.
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
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

/// One steered connection: its ends, its upstream (opened on first use) and its policed ends.
/// Its requests come one after the other.
struct Connection {
    ends: Ends,
    upstream: Mutex<Option<SendRequest<Incoming>>>,
    sides: Sides,
}

pub(super) async fn serve(client: TcpStream, ends: Ends, sides: Sides, context: Arc<ProxyContext>) {
    let connection = Arc::new(Connection { ends, upstream: Mutex::default(), sides });
    let service = service_fn(move |request| {
        let (context, connection) = (context.clone(), connection.clone());
        async move { Ok::<_, hyper::Error>(handle(request, &connection, &context).await) }
    });
    let served =
        hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(client), service);
    if let Err(e) = served.await {
        debug!(client = %ends.client, destination = %ends.destination, "L7 proxy connection: {e}");
    }
}

async fn handle(request: Request<Incoming>, connection: &Connection, context: &ProxyContext) -> Response<Body> {
    // Without a policy (the agent has not converged yet) nothing can be judged: fail closed.
    let Some(policy) = context.policy.current() else {
        return plain(StatusCode::FORBIDDEN, ACCESS_DENIED);
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
            plain(StatusCode::FORBIDDEN, ACCESS_DENIED)
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
        context.flows.publish(answered, L7Flow { latency_ns: 0, http: Some(http), dns: None });
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

/// Sends the request over the connection's upstream, opened on first use.
async fn forward(
    request: Request<Incoming>,
    ends: Ends,
    upstream: &Mutex<Option<SendRequest<Incoming>>>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let mut upstream = upstream.lock().await;
    let sender = match upstream.as_mut() {
        Some(sender) if !sender.is_closed() => sender,
        _ => upstream.insert(connect(ends).await?),
    };
    sender.ready().await?;
    Ok(sender.send_request(request).await?)
}

/// An upstream connection from the client's address.
async fn connect(ends: Ends) -> std::io::Result<SendRequest<Incoming>> {
    let socket = TcpSocket::from_std_stream(upstream_socket(ends, Type::STREAM)?.into());
    let stream = socket.connect(ends.destination.into()).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let body = Full::new(Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
