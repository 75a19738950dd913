//! One steered connection: HTTP/1.1 requests judged one by one (keep-alive), each forwarded
//! over one upstream connection from the client's own address, or answered with a 403.
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use palisade_common::Direction;
use palisade_common::{COOKIE_NONE, MARK_FROM_PROXY};
use palisade_policy::CompiledPolicy;
use palisade_policy::RequestVerdict;
use palisade_policy::l7::{HttpRequest, HttpRewrite, L7Request};
use palisade_policy::model::Protocol;
use palisade_policy::trace::FlowPort;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tracing::{debug, info};

use super::{L7Diff, L7Diffs, ProxyPolicy, SharedPolicy};

type Body = BoxBody<Bytes, hyper::Error>;

/// What Cilium's proxy (Envoy) answers a denied request with.
const ACCESS_DENIED: &str = "Access denied\r\n";

/// The connection's two ends.
#[derive(Clone, Copy)]
struct Ends {
    client: Ipv4Addr,
    destination: SocketAddrV4,
}

/// One steered connection: its ends, its upstream (opened on first use) and its policed ends
/// under the policy snapshot they were found in. Its requests come one after the other.
struct Connection {
    ends: Ends,
    upstream: Mutex<Option<SendRequest<Incoming>>>,
    /// Finding an end's endpoint and identity is a lookup in the compiled policy; it is done
    /// again only when the agent publishes a new one.
    sides: std::sync::Mutex<Option<FoundSides>>,
}

/// An end's sides and the policy snapshot they were found in.
type FoundSides = (Arc<CompiledPolicy>, Arc<[Side]>);

impl Connection {
    fn sides(&self, policy: &Arc<CompiledPolicy>) -> Arc<[Side]> {
        let mut cached = self.sides.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((found_in, sides)) if Arc::ptr_eq(found_in, policy) => sides.clone(),
            _ => {
                let sides: Arc<[Side]> = sides(policy, self.ends).into();
                *cached = Some((policy.clone(), sides.clone()));
                sides
            }
        }
    }
}

pub(super) async fn serve(client: TcpStream, policy: SharedPolicy, diffs: L7Diffs) {
    let (Ok(SocketAddr::V4(peer)), Ok(SocketAddr::V4(destination))) = (client.peer_addr(), client.local_addr()) else {
        return;
    };
    let ends = Ends { client: *peer.ip(), destination };
    let connection = Arc::new(Connection { ends, upstream: Mutex::default(), sides: std::sync::Mutex::default() });
    let service = service_fn(move |request| {
        let (policy, diffs, connection) = (policy.clone(), diffs.clone(), connection.clone());
        async move { Ok::<_, hyper::Error>(handle(request, &connection, policy.current(), &diffs).await) }
    });
    let served =
        hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(client), service);
    if let Err(e) = served.await {
        debug!(client = %ends.client, destination = %ends.destination, "L7 proxy connection: {e}");
    }
}

async fn handle(
    request: Request<Incoming>,
    connection: &Connection,
    policy: Option<ProxyPolicy>,
    diffs: &L7Diffs,
) -> Response<Body> {
    // Without a policy (the agent has not converged yet) nothing can be judged: fail closed.
    let Some(policy) = policy else {
        return plain(StatusCode::FORBIDDEN, ACCESS_DENIED);
    };
    let ends = connection.ends;
    let seen = as_judged(&request);
    let port = FlowPort { protocol: Protocol::TCP, port: ends.destination.port() };
    let sides = connection.sides(&policy.enforced);
    let enforced: Vec<RequestVerdict> = sides.iter().map(|s| s.judge(&policy.enforced, port, &seen)).collect();
    if let Some(candidate) = &policy.candidate {
        for (side, enforced) in sides.iter().zip(&enforced) {
            let judged = side.judge(candidate, port, &seen);
            if judged.allowed != enforced.allowed {
                let L7Request::Http(http) = &seen else { continue };
                diffs.record(L7Diff {
                    namespace: side.namespace.clone(),
                    pod: side.name.clone(),
                    direction: side.direction,
                    peer: side.peer,
                    peer_identity: side.remote,
                    port: port.port,
                    method: http.method.clone(),
                    path: http.path.clone(),
                    enforced_allows: enforced.allowed,
                    candidate_allows: judged.allowed,
                    enforced_cookie: enforced.cookie,
                    candidate_cookie: judged.cookie,
                });
            }
        }
    }
    if let Some(denied) = enforced.iter().find(|v| !v.allowed) {
        info!(client = %ends.client, destination = %ends.destination, reason = %denied.reason, "L7 request denied");
        return plain(StatusCode::FORBIDDEN, ACCESS_DENIED);
    }
    let mut request = request;
    for verdict in &enforced {
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

/// One end of the connection that is a local endpoint, whose policy judges the request.
struct Side {
    namespace: String,
    name: String,
    direction: Direction,
    /// The other end's address and identity.
    peer: Ipv4Addr,
    remote: u32,
}

/// The client's egress and the destination's ingress, where they are local endpoints.
fn sides(policy: &CompiledPolicy, ends: Ends) -> Vec<Side> {
    let destination = *ends.destination.ip();
    let mut sides = Vec::with_capacity(2);
    for (local, peer, direction) in
        [(ends.client, destination, Direction::Egress), (destination, ends.client, Direction::Ingress)]
    {
        if let Some((namespace, name)) = policy.endpoint_at(local) {
            sides.push(Side {
                namespace: namespace.to_string(),
                name: name.to_string(),
                direction,
                peer,
                remote: policy.identity_of_addr(peer),
            });
        }
    }
    sides
}

impl Side {
    /// The L7 rules decide where the entry redirects; elsewhere the L4 entry alone does.
    fn judge(&self, policy: &CompiledPolicy, port: FlowPort, request: &L7Request) -> RequestVerdict {
        if let Some(verdict) =
            policy.judge_request(&self.namespace, &self.name, self.direction, self.remote, port, request)
        {
            return verdict;
        }
        let allowed = policy.l4_allows(&self.namespace, &self.name, self.direction, self.remote, port).unwrap_or(true);
        let reason = if allowed { "allowed at L4" } else { "denied at L4" };
        RequestVerdict { allowed, reason: reason.to_string(), cookie: COOKIE_NONE, rewrite: HttpRewrite::default() }
    }
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

/// An upstream connection from the client's address, marked so the datapath passes it (its
/// requests are judged) and steers its replies back here.
async fn connect(ends: Ends) -> std::io::Result<SendRequest<Incoming>> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_ip_transparent_v4(true)?;
    socket.set_mark(MARK_FROM_PROXY)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((ends.client, 0)).into())?;
    let stream = TcpSocket::from_std_stream(socket.into()).connect(ends.destination.into()).await?;
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
