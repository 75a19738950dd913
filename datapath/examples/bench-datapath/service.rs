//! The first packet of a new connection through a Service, against the same connection made directly.
use super::*;

/// The first packet of a new connection through a Service against the same connection made to
/// the backend directly, summed over every hook it crosses on the node: the client's
/// `from_endpoint` (which defers the Service connection), then the backend veth's
/// `deferred_egress` (which judges the client's egress after translation, and returns at once for
/// an unmarked packet) and `to_endpoint`. Each packet has a new source port, so nothing is
/// cached in conntrack; the verdict cache is warm in both arms (the same peers and ports), so
/// the figures are of a new connection, not of a never-seen peer. Each hook is a run of its own
/// (repeat 1), whose timing overhead the two arms share: the absolute figures include three of
/// them, and only `first_packet_service_added_ns` is the cost of the Service path.
pub(super) fn service_cost(
    datapath: &mut Datapath,
    client_if: u32,
    server_if: u32,
    client: Ipv4Addr,
    server: Ipv4Addr,
) {
    const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 250, 10);
    datapath.set_ipcache(SERVICE_IP, 32, IDENTITY_SERVICE).unwrap();
    let service_mark = datapath.service_mark(0).unwrap();
    let mut sports = 20000u16..;
    let mut first_packets = |datapath: &Datapath, via_service: bool| -> f64 {
        let runs = sports.by_ref().take(1000).map(|sport| {
            let translated = tcp_frame_from(sport, client, server, PORT, 0x02);
            let (sent, mark) = match via_service {
                true => (tcp_frame_from(sport, client, SERVICE_IP, 80, 0x02), service_mark),
                false => (translated.clone(), 0),
            };
            let hooks = [
                (Hook::FromEndpoint, client_if, &sent, 0),
                (Hook::DeferredEgress, server_if, &translated, mark),
                (Hook::ToEndpoint, server_if, &translated, mark),
            ];
            let mut total = Duration::ZERO;
            for (hook, ifindex, frame, mark) in hooks {
                let result = datapath.run_marked_frame(hook, ifindex, mark, frame, 1).unwrap();
                assert!(result.passed, "{hook:?}");
                total += result.per_run;
            }
            total.as_nanos() as f64
        });
        median(runs.collect())
    };
    let (mut direct, mut service) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        direct.push(first_packets(datapath, false));
        service.push(first_packets(datapath, true));
    }
    let (direct, service) = (median(direct), median(service));
    println!("first_packet_pod_to_pod_ns: {direct:.1} ns");
    println!("first_packet_via_service_ns: {service:.1} ns");
    println!("first_packet_service_added_ns: {:.1} ns", service - direct);
}
