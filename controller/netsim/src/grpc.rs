//! gRPC over h2c on HTTP pods: a responder that answers every unary call with an empty message
//! and `grpc-status: 0`, and the one call of `palisade local probe --grpc`.
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::net::in_netns;
use crate::probe::Outcome;

/// A gRPC message frame holding an empty message: not compressed, length 0.
const EMPTY_MESSAGE: [u8; 5] = [0; 5];

/// A gRPC call (`content-type: application/grpc`, `application/grpc+proto`...).
pub(crate) fn is_call<B>(request: &Request<B>) -> bool {
    request.headers().get(CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
}

/// The answer to any call: an empty message, then `grpc-status: 0` in the trailers.
pub(crate) fn answer() -> Response<BoxBody<Bytes, Infallible>> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from_static(&EMPTY_MESSAGE)).with_trailers(async move { Some(Ok(trailers)) });
    let mut response = Response::new(body.boxed());
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// What one call got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcOutcome {
    /// The call's status (`grpc-status`, 0 for OK; 7 is PERMISSION_DENIED) and message.
    Status { code: u32, message: String, time: Duration },
    /// No gRPC status: refused, timed out, unreachable, closed first, or an HTTP error.
    Failed(Outcome),
}

impl GrpcOutcome {
    /// The call succeeded.
    pub fn passed(&self) -> bool {
        matches!(self, GrpcOutcome::Status { code: 0, .. })
    }
}

/// Makes one unary call of `method` (`/package.Service/Method`) with an empty message to
/// `to:port` from inside `netns`, over HTTP/2 with prior knowledge. Errors are failures to try
/// at all.
pub fn call(netns: &str, to: impl Into<IpAddr>, port: u16, method: &str, timeout: Duration) -> io::Result<GrpcOutcome> {
    let (to, method) = (to.into(), method.to_owned());
    in_netns(netns, move || call_here(to, port, &method, timeout))?
}

fn call_here(to: IpAddr, port: u16, method: &str, timeout: Duration) -> io::Result<GrpcOutcome> {
    let address = SocketAddr::from((to, port));
    let request = Request::post(format!("http://{address}{method}"))
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&EMPTY_MESSAGE)))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("not a gRPC method: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let start = Instant::now();
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(address).await?;
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(io::Error::other)?;
            tokio::spawn(connection);
            let response = sender.send_request(request).await.map_err(io::Error::other)?;
            status_of(response).await
        };
        Ok(match tokio::time::timeout(timeout, exchange).await {
            Err(_) => GrpcOutcome::Failed(Outcome::TimedOut),
            Ok(Ok(Some((code, message)))) => GrpcOutcome::Status { code, message, time: start.elapsed() },
            Ok(Ok(None)) => GrpcOutcome::Failed(Outcome::Refused),
            Ok(Err(e)) => GrpcOutcome::Failed(crate::http::failure(&e)),
        })
    })
}

/// The call's status and message: from the headers of a trailers-only response (what a proxy
/// answers a denied call with), else from the trailers after the message. None when the
/// response is no gRPC answer (an HTTP error status, no `grpc-status`).
async fn status_of(response: Response<Incoming>) -> io::Result<Option<(u32, String)>> {
    let (parts, body) = response.into_parts();
    if parts.status != StatusCode::OK {
        return Ok(None);
    }
    let status = |headers: &HeaderMap| {
        let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default().to_owned();
        Some((code, message))
    };
    if let Some(found) = status(&parts.headers) {
        return Ok(Some(found));
    }
    let collected = body.collect().await.map_err(io::Error::other)?;
    Ok(collected.trailers().and_then(status))
}
