//! What the policy test files share.
use palisade_policy::CompiledPolicy;
use palisade_policy::trace::{self, FlowEnd, FlowPort, HttpRequest, L7Request};

/// `palisade trace` from `from` to `to` on `port` (`8080/TCP`), with an optional HTTP request.
pub fn trace_of(engine: &CompiledPolicy, from: &str, to: &str, port: &str, http: Option<&str>) -> trace::Trace {
    let request = http.map(|r| L7Request::Http(HttpRequest::parse(r, &[]).unwrap()));
    trace_l7(engine, from, to, port, request.as_ref())
}

/// [`trace_of`] with any L7 request: an HTTP request with headers, or a DNS query.
pub fn trace_l7(engine: &CompiledPolicy, from: &str, to: &str, port: &str, l7: Option<&L7Request>) -> trace::Trace {
    trace::trace(
        engine,
        &FlowEnd::parse(from).unwrap(),
        &FlowEnd::parse(to).unwrap(),
        FlowPort::parse(port).unwrap(),
        l7,
    )
    .unwrap()
}
