//! The datapath operations the agent needs, behind a trait: the real eBPF datapath on a node, a
//! recording one in tests and benchmarks. Endpoint interfaces are found the same way.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use palisade_common::{EndpointCounters, FlowEvent, PolicyEntry, PolicyKey};
use palisade_datapath::{
    Datapath, EndpointAddrs, EndpointId, EndpointState, EventReader, Flow, Mode, Result, Slot, interface_name,
};
use tracing::debug;

pub trait Dataplane {
    fn endpoints(&self) -> Result<Vec<EndpointId>>;
    fn state(&self, endpoint: EndpointId) -> Result<EndpointState>;
    fn slot_entries(&self, endpoint: EndpointId, slot: Slot) -> Result<Vec<PolicyEntry>>;
    /// `addrs`: the endpoint's addresses, the only sources its packets may carry.
    fn attach(&mut self, endpoint: EndpointId, ifname: &str, addrs: EndpointAddrs) -> Result<()>;
    /// Makes `endpoint` the host endpoint: its slots judge the node's own traffic.
    fn attach_host(&mut self, endpoint: EndpointId) -> Result<()>;
    fn detach(&mut self, endpoint: EndpointId) -> Result<()>;
    /// Node interfaces (no endpoint's): where a Service connection's source is judged after
    /// translation when its backend is not a local endpoint (see `Datapath::attach_network`).
    fn attach_network(&mut self, ifname: &str) -> Result<()>;
    fn detach_network(&mut self, ifname: &str) -> Result<()>;
    fn network_interfaces(&self) -> Result<Vec<String>>;
    fn set_ipcache(&mut self, addr: IpAddr, prefix_len: u8, identity: u32) -> Result<()>;
    fn remove_ipcache(&mut self, addr: IpAddr, prefix_len: u8) -> Result<()>;
    /// Makes `slot`, which holds `from`, hold `to` (both sorted by key), changing only what differs.
    fn rewrite_slot(
        &mut self,
        endpoint: EndpointId,
        slot: Slot,
        from: &[PolicyEntry],
        to: &[PolicyEntry],
    ) -> Result<()>;
    fn set_candidate(&mut self, endpoint: EndpointId, candidate: Option<Slot>) -> Result<()>;
    fn flip_all(&mut self, endpoints: &[EndpointId]) -> Result<()>;
    fn flows(&self) -> Result<Vec<Flow>>;
    fn clear_flows(&mut self) -> Result<()>;
    fn counters(&self, endpoint: EndpointId) -> Result<EndpointCounters>;
    /// Where the node's L7 proxy listens on 127.0.0.1; `None`: redirects fail closed.
    fn set_proxy_port(&mut self, port: Option<u16>) -> Result<()>;
    /// The node's flow events (the kernel's ring buffer); none unless the dataplane has them.
    fn events(&self) -> Result<Box<dyn FlowEvents>> {
        Ok(Box::new(EventQueue::default()))
    }
}

/// A consumer of flow events.
pub trait FlowEvents {
    /// Hands every available event to `on_event`, waiting up to `timeout` when there is none.
    fn read(&mut self, timeout: Duration, on_event: &mut dyn FnMut(FlowEvent)) -> usize;
}

impl FlowEvents for EventReader {
    fn read(&mut self, timeout: Duration, on_event: &mut dyn FnMut(FlowEvent)) -> usize {
        EventReader::read(self, timeout, on_event)
    }
}

/// Flow events in memory, shared by its clones: tests push what the kernel would have seen.
#[derive(Clone, Debug, Default)]
pub struct EventQueue(Arc<Mutex<VecDeque<FlowEvent>>>);

impl EventQueue {
    pub fn push(&self, event: FlowEvent) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push_back(event);
    }
}

impl FlowEvents for EventQueue {
    /// Never waits: what is queued is all there is.
    fn read(&mut self, _timeout: Duration, on_event: &mut dyn FnMut(FlowEvent)) -> usize {
        let events: Vec<FlowEvent> = self.0.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        let read = events.len();
        events.into_iter().for_each(on_event);
        read
    }
}

impl Dataplane for Datapath {
    fn endpoints(&self) -> Result<Vec<EndpointId>> {
        Datapath::endpoints(self)
    }
    fn state(&self, endpoint: EndpointId) -> Result<EndpointState> {
        Datapath::state(self, endpoint)
    }
    fn slot_entries(&self, endpoint: EndpointId, slot: Slot) -> Result<Vec<PolicyEntry>> {
        Datapath::slot_entries(self, endpoint, slot)
    }
    fn attach(&mut self, endpoint: EndpointId, ifname: &str, addrs: EndpointAddrs) -> Result<()> {
        Datapath::attach(self, endpoint, ifname, addrs)
    }
    fn attach_host(&mut self, endpoint: EndpointId) -> Result<()> {
        Datapath::attach_host(self, endpoint)
    }
    fn detach(&mut self, endpoint: EndpointId) -> Result<()> {
        Datapath::detach(self, endpoint)
    }
    fn attach_network(&mut self, ifname: &str) -> Result<()> {
        Datapath::attach_network(self, ifname)
    }
    fn detach_network(&mut self, ifname: &str) -> Result<()> {
        Datapath::detach_network(self, ifname)
    }
    fn network_interfaces(&self) -> Result<Vec<String>> {
        Datapath::network_interfaces(self)
    }
    fn set_ipcache(&mut self, addr: IpAddr, prefix_len: u8, identity: u32) -> Result<()> {
        Datapath::set_ipcache(self, addr, prefix_len, identity)
    }
    fn remove_ipcache(&mut self, addr: IpAddr, prefix_len: u8) -> Result<()> {
        Datapath::remove_ipcache(self, addr, prefix_len)
    }
    fn rewrite_slot(
        &mut self,
        endpoint: EndpointId,
        slot: Slot,
        from: &[PolicyEntry],
        to: &[PolicyEntry],
    ) -> Result<()> {
        Datapath::rewrite_slot(self, endpoint, slot, from, to)
    }
    fn set_candidate(&mut self, endpoint: EndpointId, candidate: Option<Slot>) -> Result<()> {
        Datapath::set_candidate(self, endpoint, candidate)
    }
    fn flip_all(&mut self, endpoints: &[EndpointId]) -> Result<()> {
        Datapath::flip_all(self, endpoints)
    }
    fn flows(&self) -> Result<Vec<Flow>> {
        Datapath::flows(self)
    }
    fn clear_flows(&mut self) -> Result<()> {
        Datapath::clear_flows(self)
    }
    fn counters(&self, endpoint: EndpointId) -> Result<EndpointCounters> {
        Datapath::counters(self, endpoint)
    }
    fn set_proxy_port(&mut self, port: Option<u16>) -> Result<()> {
        Datapath::set_proxy_port(self, port)
    }
    fn events(&self) -> Result<Box<dyn FlowEvents>> {
        Ok(Box::new(Datapath::events(self)?))
    }
}

/// One datapath operation, as [`RecordingDataplane`] logs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotOp {
    Attach(EndpointId, String),
    AttachHost(EndpointId),
    Detach(EndpointId),
    Update { endpoint: EndpointId, slot: Slot, upserts: usize, removals: usize },
    SetCandidate(EndpointId, Option<Slot>),
    FlipAll(Vec<EndpointId>),
    Ipcache(IpAddr, u8, Option<u32>),
    ClearFlows,
    AttachNetwork(String),
    DetachNetwork(String),
}

/// An in-memory datapath that keeps what was programmed and logs every operation: the agent's
/// logic is tested against it, and the agent benchmark measures the agent without the kernel.
#[derive(Debug, Default)]
pub struct RecordingDataplane {
    pub endpoints: BTreeMap<EndpointId, RecordedEndpoint>,
    pub ipcache: BTreeMap<(IpAddr, u8), u32>,
    /// Node interfaces with `deferred_egress`.
    pub network: std::collections::BTreeSet<String>,
    pub log: Vec<SlotOp>,
    /// Flows the tests pretend the kernel saw.
    pub flows: Vec<Flow>,
    pub counters: HashMap<EndpointId, EndpointCounters>,
    /// Flow events the tests pretend the kernel sent; the agent's reader drains the same queue.
    pub events: EventQueue,
    pub proxy_port: Option<u16>,
}

#[derive(Clone, Debug, Default)]
pub struct RecordedEndpoint {
    pub ifname: Option<String>,
    /// The addresses it was attached with.
    pub addrs: EndpointAddrs,
    pub ifindex: u32,
    pub enforced: Option<Slot>,
    pub candidate: Option<Slot>,
    pub slots: [BTreeMap<PolicyKey, PolicyEntry>; 2],
}

impl RecordedEndpoint {
    fn slot_mut(&mut self, slot: Slot) -> &mut BTreeMap<PolicyKey, PolicyEntry> {
        &mut self.slots[slot_index(slot)]
    }

    /// The entries of `slot`, sorted by key.
    pub fn entries(&self, slot: Slot) -> Vec<PolicyEntry> {
        self.slots[slot_index(slot)].values().copied().collect()
    }

    pub fn enforced_entries(&self) -> Vec<PolicyEntry> {
        self.entries(self.enforced.unwrap_or(Slot::A))
    }
}

fn slot_index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

impl RecordingDataplane {
    /// The index an interface gets here: derived from its name, so a test's resolver agrees.
    pub fn ifindex(ifname: &str) -> u32 {
        ifname.bytes().fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619)) | 1
    }

    fn endpoint(&mut self, endpoint: EndpointId) -> &mut RecordedEndpoint {
        self.endpoints
            .entry(endpoint)
            .or_insert_with(|| RecordedEndpoint { enforced: Some(Slot::A), ..Default::default() })
    }
}

impl Dataplane for RecordingDataplane {
    fn set_proxy_port(&mut self, port: Option<u16>) -> Result<()> {
        self.proxy_port = port;
        Ok(())
    }
    fn endpoints(&self) -> Result<Vec<EndpointId>> {
        Ok(self.endpoints.keys().copied().collect())
    }
    fn state(&self, endpoint: EndpointId) -> Result<EndpointState> {
        let e = self.endpoints.get(&endpoint).ok_or(palisade_datapath::Error::UnknownEndpoint(endpoint))?;
        Ok(EndpointState {
            mode: Mode::Enforce,
            enforced: e.enforced.unwrap_or(Slot::A),
            candidate: e.candidate,
            ifindex: e.ifindex,
        })
    }
    fn slot_entries(&self, endpoint: EndpointId, slot: Slot) -> Result<Vec<PolicyEntry>> {
        Ok(self.endpoints.get(&endpoint).map(|e| e.entries(slot)).unwrap_or_default())
    }
    fn attach(&mut self, endpoint: EndpointId, ifname: &str, addrs: EndpointAddrs) -> Result<()> {
        let e = self.endpoint(endpoint);
        e.addrs = addrs;
        e.ifname = Some(ifname.to_owned());
        e.ifindex = RecordingDataplane::ifindex(ifname);
        self.log.push(SlotOp::Attach(endpoint, ifname.to_owned()));
        Ok(())
    }
    fn attach_host(&mut self, endpoint: EndpointId) -> Result<()> {
        self.endpoint(endpoint).ifindex = palisade_datapath::HOST_ENDPOINT_IFINDEX;
        self.log.push(SlotOp::AttachHost(endpoint));
        Ok(())
    }
    fn detach(&mut self, endpoint: EndpointId) -> Result<()> {
        self.endpoints.remove(&endpoint);
        self.log.push(SlotOp::Detach(endpoint));
        Ok(())
    }
    fn attach_network(&mut self, ifname: &str) -> Result<()> {
        self.network.insert(ifname.to_owned());
        self.log.push(SlotOp::AttachNetwork(ifname.to_owned()));
        Ok(())
    }
    fn detach_network(&mut self, ifname: &str) -> Result<()> {
        self.network.remove(ifname);
        self.log.push(SlotOp::DetachNetwork(ifname.to_owned()));
        Ok(())
    }
    fn network_interfaces(&self) -> Result<Vec<String>> {
        Ok(self.network.iter().cloned().collect())
    }
    fn set_ipcache(&mut self, addr: IpAddr, prefix_len: u8, identity: u32) -> Result<()> {
        self.ipcache.insert((addr, prefix_len), identity);
        self.log.push(SlotOp::Ipcache(addr, prefix_len, Some(identity)));
        Ok(())
    }
    fn remove_ipcache(&mut self, addr: IpAddr, prefix_len: u8) -> Result<()> {
        self.ipcache.remove(&(addr, prefix_len));
        self.log.push(SlotOp::Ipcache(addr, prefix_len, None));
        Ok(())
    }
    fn rewrite_slot(
        &mut self,
        endpoint: EndpointId,
        slot: Slot,
        from: &[PolicyEntry],
        to: &[PolicyEntry],
    ) -> Result<()> {
        let (upserts, removals) = palisade_datapath::slot_changes(from, to);
        let entries = self.endpoint(endpoint).slot_mut(slot);
        for entry in &upserts {
            entries.insert(entry.key, *entry);
        }
        for key in &removals {
            entries.remove(key);
        }
        self.log.push(SlotOp::Update { endpoint, slot, upserts: upserts.len(), removals: removals.len() });
        Ok(())
    }
    fn set_candidate(&mut self, endpoint: EndpointId, candidate: Option<Slot>) -> Result<()> {
        self.endpoint(endpoint).candidate = candidate;
        self.log.push(SlotOp::SetCandidate(endpoint, candidate));
        Ok(())
    }
    fn flip_all(&mut self, endpoints: &[EndpointId]) -> Result<()> {
        for &endpoint in endpoints {
            let e = self.endpoint(endpoint);
            let candidate = e.candidate.ok_or(palisade_datapath::Error::NoCandidate(endpoint))?;
            e.candidate = e.enforced;
            e.enforced = Some(candidate);
        }
        self.log.push(SlotOp::FlipAll(endpoints.to_vec()));
        Ok(())
    }
    fn flows(&self) -> Result<Vec<Flow>> {
        Ok(self.flows.clone())
    }
    fn clear_flows(&mut self) -> Result<()> {
        self.flows.clear();
        self.log.push(SlotOp::ClearFlows);
        Ok(())
    }
    fn counters(&self, endpoint: EndpointId) -> Result<EndpointCounters> {
        Ok(self.counters.get(&endpoint).copied().unwrap_or_default())
    }
    fn events(&self) -> Result<Box<dyn FlowEvents>> {
        Ok(Box::new(self.events.clone()))
    }
}

/// A local pod's host-side interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

/// Finds the host-side interface of a local pod from its address, and the node's interfaces.
pub trait InterfaceResolver {
    fn interface(&self, pod_ip: IpAddr) -> Option<Interface>;
    /// Every interface of the node's network namespace but the loopback.
    fn interfaces(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The interface the node routes a pod's address through, as veth-based CNIs set it up (and as
/// local mode does): the kernel's answer to `ip route get`, asked over rtnetlink in the calling
/// thread's network namespace. Pods whose route leaves through no such device (not yet wired,
/// or another node's) have none.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteResolver;

impl InterfaceResolver for RouteResolver {
    fn interface(&self, pod_ip: IpAddr) -> Option<Interface> {
        let route = match route_to(pod_ip) {
            Ok(route) => route,
            Err(e) => {
                debug!(%pod_ip, error = %e, "no route to the pod");
                return None;
            }
        };
        // The route to a local pod is a direct one: a gateway means it lives elsewhere.
        if route.attributes.iter().any(|a| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Via(_))) {
            return None;
        }
        let index = route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(index) => Some(*index),
            _ => None,
        })?;
        let name = interface_name(index)?;
        (name != "lo").then_some(Interface { name, index })
    }

    fn interfaces(&self) -> Vec<String> {
        // SAFETY: if_nameindex returns an array ended by a zero entry, or null; freed below.
        unsafe {
            let list = libc::if_nameindex();
            if list.is_null() {
                return Vec::new();
            }
            let mut names = Vec::new();
            let mut entry = list;
            while (*entry).if_index != 0 {
                let name = std::ffi::CStr::from_ptr((*entry).if_name).to_string_lossy().into_owned();
                if name != "lo" {
                    names.push(name);
                }
                entry = entry.add(1);
            }
            libc::if_freenameindex(list);
            names
        }
    }
}

/// The kernel's route to `destination` (`RTM_GETROUTE` for one address, as `ip route get` asks).
fn route_to(destination: IpAddr) -> std::io::Result<RouteMessage> {
    let mut request = RouteMessage::default();
    let (family, length, address) = match destination {
        IpAddr::V4(v4) => (AddressFamily::Inet, 32, RouteAddress::Inet(v4)),
        IpAddr::V6(v6) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(v6)),
    };
    request.header.address_family = family;
    request.header.destination_prefix_length = length;
    request.attributes.push(RouteAttribute::Destination(address));
    match rtnetlink(RouteNetlinkMessage::GetRoute(request), NLM_F_REQUEST)? {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => Ok(route),
        other => Err(std::io::Error::other(format!("unexpected answer to a route request: {other:?}"))),
    }
}

/// Sends one rtnetlink request in the calling thread's network namespace and returns the
/// kernel's answer (an acknowledgement is `NetlinkPayload::Error` with no error code); a
/// failure the kernel reports is an error.
pub(crate) fn rtnetlink(
    request: RouteNetlinkMessage,
    flags: u16,
) -> std::io::Result<NetlinkPayload<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::from(request));
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    socket.send(&buffer, 0)?;
    let (reply, _) = socket.recv_from_full()?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply).map_err(std::io::Error::other)?;
    match reply.payload {
        NetlinkPayload::Error(error) if error.code.is_some() => Err(error.to_io()),
        payload => Ok(payload),
    }
}
