//! HTTP pods (`palisade.dev/http-ports`): a server that answers every request with `200 OK`,
//! `palisade-http NAMESPACE/POD METHOD PATH` and the request's headers echoed back as `x-echo-`
//! headers (and gRPC calls over h2c as [`crate::grpc`] does), and the one request of
//! `palisade local probe --http`.
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HOST, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use palisade_policy::l7::HttpRequest;

use crate::net::in_netns;
use crate::probe::Outcome;
use crate::responders::IDLE_TIMEOUT;

/// Serves HTTP/1.1 with keep-alive, and HTTP/2 with prior knowledge (gRPC), on a listener until
/// the runtime stops.
pub(crate) async fn serve(listener: tokio::net::TcpListener, key: Arc<str>) {
    while let Ok((stream, _)) = listener.accept().await {
        let key = key.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(key.clone(), request));
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // An idle keep-alive connection ends after a while, like the echo responders'.
            builder.http1().timer(TokioTimer::new()).header_read_timeout(IDLE_TIMEOUT);
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(key: Arc<str>, request: Request<Incoming>) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let grpc = crate::grpc::is_call(&request);
    let (parts, body) = request.into_parts();
    // Read to the end, so that the connection can carry the next request.
    let _ = body.collect().await;
    if grpc {
        return Ok(crate::grpc::answer());
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let text = format!("palisade-http {key} {} {path}\n", parts.method);
    let mut response = Response::new(Full::new(Bytes::from(text)).boxed());
    for (name, value) in &parts.headers {
        if let Ok(echo) = HeaderName::try_from(format!("x-echo-{name}")) {
            response.headers_mut().append(echo, value.clone());
        }
    }
    Ok(response)
}

/// What one HTTP request got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpOutcome {
    Response {
        status: StatusCode,
        headers: Vec<(String, String)>,
        body: String,
        time: Duration,
    },
    /// No response: refused, timed out, unreachable, or the connection closed first.
    Failed(Outcome),
}

impl HttpOutcome {
    /// A response other than 403 Forbidden (what an L7 proxy answers a denied request with).
    pub fn passed(&self) -> bool {
        matches!(self, HttpOutcome::Response { status, .. } if *status != StatusCode::FORBIDDEN)
    }
}

/// Sends `request` to `to:port` from inside `netns` on one connection (`Connection: close`), with
/// `Host: to:port` unless the request has its own. Errors are failures to try at all.
pub fn request(
    netns: &str,
    to: impl Into<IpAddr>,
    port: u16,
    request: &HttpRequest,
    timeout: Duration,
) -> io::Result<HttpOutcome> {
    let (to, request) = (to.into(), request.clone());
    in_netns(netns, move || request_here(to, port, &request, timeout))?
}

/// Sends `requests` one after the other on one keep-alive connection from inside `netns` (the
/// last with `Connection: close`): what each got, each within `timeout`. Once the connection
/// fails, the requests left fail the same way.
pub fn requests(
    netns: &str,
    to: impl Into<IpAddr>,
    port: u16,
    requests: &[HttpRequest],
    timeout: Duration,
) -> io::Result<Vec<HttpOutcome>> {
    let (to, requests) = (to.into(), requests.to_vec());
    in_netns(netns, move || exchange(to, port, &requests, timeout))?
}

/// [`request`] from the calling thread's namespace.
pub(crate) fn request_here(to: IpAddr, port: u16, request: &HttpRequest, timeout: Duration) -> io::Result<HttpOutcome> {
    let mut outcomes = exchange(to, port, std::slice::from_ref(request), timeout)?;
    Ok(outcomes.remove(0))
}

/// [`requests`] from the calling thread's namespace.
fn exchange(to: IpAddr, port: u16, requests: &[HttpRequest], timeout: Duration) -> io::Result<Vec<HttpOutcome>> {
    let last = requests.len().saturating_sub(1);
    let built = requests
        .iter()
        .enumerate()
        .map(|(i, request)| {
            let mut builder = Request::builder().method(request.method.as_str()).uri(request.path.as_str());
            for (name, value) in &request.headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            if request.header("host").is_none() {
                builder = builder.header(HOST, SocketAddr::from((to, port)).to_string());
            }
            if i == last {
                builder = builder.header(CONNECTION, HeaderValue::from_static("close"));
            }
            builder
                .body(Empty::<Bytes>::new())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("not an HTTP request: {e}")))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut outcomes = Vec::with_capacity(built.len());
        let mut sender = None;
        for http in built {
            let start = Instant::now();
            let exchange = async {
                if sender.is_none() {
                    let stream = tokio::net::TcpStream::connect(SocketAddr::from((to, port))).await?;
                    let (opened, connection) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(io::Error::other)?;
                    tokio::spawn(connection);
                    sender = Some(opened);
                }
                let sender = sender.as_mut().expect("opened above");
                let response = sender.send_request(http).await.map_err(io::Error::other)?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
                let headers = parts
                    .headers
                    .iter()
                    .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
                    .collect();
                Ok::<_, io::Error>((parts.status, headers, String::from_utf8_lossy(&body).into_owned()))
            };
            let outcome = match tokio::time::timeout(timeout, exchange).await {
                Err(_) => HttpOutcome::Failed(Outcome::TimedOut),
                Ok(Ok((status, headers, body))) => {
                    HttpOutcome::Response { status, headers, body, time: start.elapsed() }
                }
                Ok(Err(e)) => HttpOutcome::Failed(failure(&e)),
            };
            let failed = match &outcome {
                HttpOutcome::Failed(failure) => Some(*failure),
                HttpOutcome::Response { .. } => None,
            };
            outcomes.push(outcome);
            if let Some(failure) = failed {
                outcomes.resize(requests.len(), HttpOutcome::Failed(failure));
                break;
            }
        }
        Ok(outcomes)
    })
}

/// What a failed HTTP exchange (HTTP/1.1 or HTTP/2) amounts to as a probe's outcome.
pub(crate) fn failure(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Outcome::Unreachable,
        io::ErrorKind::TimedOut => Outcome::TimedOut,
        // Refused, reset, or closed before a response: hyper's errors say so only in words.
        _ => Outcome::Refused,
    }
}
