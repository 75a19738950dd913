//! What the policy test files share.
use palisade_policy::CompiledPolicy;
use palisade_policy::trace::{self, FlowEnd, FlowPort, HttpRequest, L7Request};

/// `palisade trace` from `from` to `to` on `port` (`8080/TCP`), with an optional HTTP request.
pub fn trace_of(engine: &CompiledPolicy, from: &str, to: &str, port: &str, http: Option<&str>) -> trace::Trace {
    let request = http.map(|r| L7Request::Http(HttpRequest::parse(r, &[]).unwrap()));
    trace::trace(
        engine,
        &FlowEnd::parse(from).unwrap(),
        &FlowEnd::parse(to).unwrap(),
        FlowPort::parse(port).unwrap(),
        request.as_ref(),
    )
    .unwrap()
}
