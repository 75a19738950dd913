//! Palisade's datapath: loads the tc policy program, attaches it to endpoints, writes ipcache and
//! policy slots, promotes candidates atomically and reads what the program observed.
//!
//! Everything the kernel holds is pinned under one bpffs directory, so a restarted process adopts
//! the running state ([`Datapath::open`]) instead of reloading it: enforcement never stops.
//!
//! Typical agent flow: [`Datapath::load_slot`] the compiled policy into slot A, [`Datapath::attach`]
//! the endpoint; later load the candidate into the idle slot, [`Datapath::set_candidate`] it, read
//! the shadow differences ([`Datapath::flows`], [`Datapath::events`]) and [`Datapath::flip`] (or
//! [`Datapath::flip_all`]) to promote.
//!
//! The node itself is an endpoint like the others once one is made the host endpoint
//! ([`Datapath::attach_host`], Cilium's host firewall): its slots judge the traffic addressed to
//! and sent by the node's addresses (those the ipcache maps to `host`) on every interface
//! Palisade attaches to, before the pods' own programs judge it.

mod attach;
mod batch;
mod error;
mod events;
mod pins;

use std::{
    ffi::{CStr, CString},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use aya::{
    maps::{
        Array, HashMap, HashOfMaps, IterableMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuHashMap, lpm_trie::Key,
    },
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use palisade_common::{
    EndpointConfig, EndpointCounters, FlowKey, FlowStats, MAX_ENDPOINTS, NODE_STATE_EPOCH, NODE_STATE_GENERATION,
    NODE_STATE_PROXY_PORT, NODE_STATE_VERSION, PolicyEntry, PolicyKey, PolicyMatch, PolicyValue, SlotKey,
    SlotSelection,
};

pub use attach::{AttachMode, HookError};
use attach::{DEFERRED_EGRESS, FROM_ENDPOINT, FROM_HOST, FROM_NETWORK, TO_ENDPOINT, TO_HOST};
pub use batch::update_batch;
pub use error::Error;
pub use events::{EventReader, EventThread};
pub use palisade_common::{FlowEvent, HOST_ENDPOINT_IFINDEX, Mode, Slot};
use pins::Pins;

pub type Result<T, E = Error> = std::result::Result<T, E>;
pub type EndpointId = u32;

/// Where the agent pins its state unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/palisade";
pub use palisade_common::MAX_POLICY_ENTRIES;

/// The kernel requires it for LPM tries; inner maps must match the program's template.
const BPF_F_NO_PREALLOC: u32 = 1;

/// The compiled eBPF object, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade-ebpf"));

/// What an endpoint runs right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointState {
    pub mode: Mode,
    pub enforced: Slot,
    pub candidate: Option<Slot>,
    /// Host-side interface it is attached to; 0 when detached, [`HOST_ENDPOINT_IFINDEX`] for the
    /// host endpoint.
    pub ifindex: u32,
}

/// A tc hook of an endpoint's host-side interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Ingress of the host side: traffic leaving the pod, judged by its egress policy.
    FromEndpoint,
    /// Egress of the host side: traffic entering the pod, judged by its ingress policy.
    ToEndpoint,
    /// Egress of the host side (before `ToEndpoint`) or of a node interface: a Service
    /// connection after translation, judged by its source's egress policy when the packet
    /// carries the source's [`Datapath::service_mark`].
    DeferredEgress,
    /// Ingress of any interface, first: a packet addressed to the node, judged by the host
    /// endpoint's ingress policy ([`Datapath::attach_host`]).
    ToHost,
    /// Egress of any interface, first: a packet the node sends, judged by the host endpoint's
    /// egress policy.
    FromHost,
}

/// Outcome of [`Datapath::run_frame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRun {
    pub passed: bool,
    /// Mean time of one run, as the kernel measured it.
    pub per_run: Duration,
}

/// A reported flow (dropped, audited, or judged differently by the candidate), summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub key: FlowKey,
    pub packets: u64,
    pub first_seen_ns: u64,
    pub enforced_cookie: u32,
    pub candidate_cookie: u32,
}

type PolicySlot = LpmTrie<MapData, PolicyMatch, PolicyValue>;

/// An endpoint's addresses, at most one per family: the only sources its packets may carry
/// (IPv6 neighbor discovery aside). A family without one sends nothing the program passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointAddrs {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl From<Ipv4Addr> for EndpointAddrs {
    fn from(v4: Ipv4Addr) -> Self {
        EndpointAddrs { v4: Some(v4), v6: None }
    }
}

impl From<Ipv6Addr> for EndpointAddrs {
    fn from(v6: Ipv6Addr) -> Self {
        EndpointAddrs { v4: None, v6: Some(v6) }
    }
}

/// The first address of each family (a pod's `status.podIPs`).
impl FromIterator<IpAddr> for EndpointAddrs {
    fn from_iter<I: IntoIterator<Item = IpAddr>>(addrs: I) -> Self {
        let mut endpoint = EndpointAddrs::default();
        for addr in addrs {
            match addr {
                IpAddr::V4(v4) => _ = endpoint.v4.get_or_insert(v4),
                IpAddr::V6(v6) => _ = endpoint.v6.get_or_insert(v6),
            }
        }
        endpoint
    }
}

impl EndpointAddrs {
    /// In the config's layout: network order, zero for none.
    fn words(&self) -> (u32, palisade_common::Ipv6Words) {
        let v4 = self.v4.map_or(0, |v4| u32::from_ne_bytes(v4.octets()));
        let v6 = self.v6.map_or([0; 4], |v6| palisade_common::event_words(IpAddr::V6(v6)));
        (v4, v6)
    }
}

/// Handle on the pinned datapath of one node.
pub struct Datapath {
    pins: Pins,
    ipcache: LpmTrie<MapData, u32, u32>,
    ipcache6: LpmTrie<MapData, [u8; 16], u32>,
    /// ifindex -> config of attached endpoints: what the program reads.
    endpoints: HashMap<MapData, u32, EndpointConfig>,
    /// Endpoint id -> config of every endpoint: the record.
    endpoint_config: HashMap<MapData, EndpointId, EndpointConfig>,
    /// Counter indexes in use, from the record.
    used_indexes: Vec<bool>,
    node_state: Array<MapData, u32>,
    /// Per (counter index, slot): odd while a slot is rewritten in place.
    slot_writes: Array<MapData, u32>,
    policy_slots: HashOfMaps<MapData, SlotKey, PolicySlot>,
    flows: PerCpuHashMap<MapData, FlowKey, FlowStats>,
    counters: PerCpuArray<MapData, EndpointCounters>,
    /// Counter index -> ifindex of attached endpoints: how a hook finds a Service connection's source.
    endpoint_ifindex: Array<MapData, u32>,
    from_endpoint: SchedClassifier,
    to_endpoint: SchedClassifier,
    deferred_egress: SchedClassifier,
    from_network: SchedClassifier,
    to_host: SchedClassifier,
    from_host: SchedClassifier,
}

impl Datapath {
    /// Opens the datapath pinned under `pin_dir`, loading and pinning it first if there is none.
    /// Adopting never resets maps or detaches programs.
    pub fn open(pin_dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(pin_dir, None)
    }

    /// [`Datapath::open`], attaching programs the way `mode` says; by default the pinned
    /// datapath's way, or for a new one what the kernel supports (TCX from 6.6, else legacy
    /// tc). A datapath pinned with another mode is not adopted.
    pub fn open_with(pin_dir: impl AsRef<Path>, mode: Option<AttachMode>) -> Result<Self> {
        let pins = Pins::open(pin_dir.as_ref(), OBJECT, mode)?;
        let endpoint_config: HashMap<MapData, EndpointId, EndpointConfig> = pins.map("ENDPOINT_CONFIG")?;
        let mut used_indexes = vec![false; MAX_ENDPOINTS as usize];
        for entry in endpoint_config.iter() {
            let (endpoint, config) =
                entry.map_err(|source| Error::Map { map: "ENDPOINT_CONFIG", endpoint: None, source })?;
            *used_indexes
                .get_mut(config.index as usize)
                .ok_or(Error::TooManyEndpoints { endpoint, max: MAX_ENDPOINTS })? = true;
        }
        Ok(Datapath {
            ipcache: pins.map("IPCACHE")?,
            ipcache6: pins.map("IPCACHE6")?,
            endpoints: pins.map("ENDPOINTS")?,
            endpoint_config,
            used_indexes,
            node_state: pins.map("NODE_STATE")?,
            slot_writes: pins.map("SLOT_WRITES")?,
            policy_slots: pins.map("POLICY_SLOTS")?,
            flows: pins.map("FLOWS")?,
            counters: pins.map("COUNTERS")?,
            endpoint_ifindex: pins.map("ENDPOINT_IFINDEX")?,
            from_endpoint: pins.program(FROM_ENDPOINT)?,
            to_endpoint: pins.program(TO_ENDPOINT)?,
            deferred_egress: pins.program(DEFERRED_EGRESS)?,
            from_network: pins.program(FROM_NETWORK)?,
            to_host: pins.program(TO_HOST)?,
            from_host: pins.program(FROM_HOST)?,
            pins,
        })
    }

    /// Unpins everything: once the last process closes its handles, the programs detach and the
    /// maps go away. For tests and uninstall.
    pub fn destroy(self) -> Result<()> {
        let pins = self.pins.clone();
        drop(self);
        pins.remove_all()
    }

    /// How programs are attached on this node.
    pub fn attach_mode(&self) -> AttachMode {
        self.pins.mode()
    }

    /// Attaches the program to both tc hooks of `ifname`, the host side of the endpoint's
    /// interface; `addrs` are the endpoint's addresses, the only sources its packets may carry.
    /// An endpoint exists from its first `load_slot` or `attach` and enforces slot A (empty:
    /// deny all) until told otherwise, so load its policy first. Attaching an attached endpoint
    /// to the same interface is a no-op. The host endpoint's programs go on the interface too,
    /// first on each hook (see [`Datapath::attach_host`]).
    pub fn attach(&mut self, endpoint: EndpointId, ifname: &str, addrs: impl Into<EndpointAddrs>) -> Result<()> {
        let ifindex =
            ifindex(ifname).map_err(|source| Error::Interface { ifname: ifname.to_owned(), endpoint, source })?;
        let (addr_be, addr6) = addrs.into().words();
        if self.pins.link_pinned(endpoint) {
            return match self.config(endpoint) {
                Ok(config) if config.ifindex == ifindex && config.addr_be == addr_be && config.addr6 == addr6 => Ok(()),
                _ => Err(Error::AlreadyAttached { endpoint }),
            };
        }
        // Maps first, so the first packet through the program finds its endpoint.
        self.ensure_endpoint(endpoint)?;
        let mut config = self.config(endpoint)?;
        if config.ifindex != 0 && config.ifindex != ifindex {
            ignore_missing(self.endpoints.remove(&config.ifindex)).map_err(map_error("ENDPOINTS", endpoint))?;
        }
        config.ifindex = ifindex;
        config.addr_be = addr_be;
        config.addr6 = addr6;
        self.write_config(config)?;
        self.endpoint_ifindex.set(config.index, ifindex, 0).map_err(map_error("ENDPOINT_IFINDEX", endpoint))?;
        self.bump_version()?;
        // An interface that was a node interface already runs the host's programs and
        // `deferred_egress`, in their order. Otherwise `deferred_egress` goes first on egress (it
        // judges a Service connection's source before `to_endpoint` judges the backend), then
        // the host's programs before everything on their hooks.
        let adopted = self.pins.adopt_network_links(ifname, endpoint)?;
        for program in [
            (&mut self.deferred_egress, DEFERRED_EGRESS),
            (&mut self.from_endpoint, FROM_ENDPOINT),
            (&mut self.to_endpoint, TO_ENDPOINT),
            (&mut self.to_host, TO_HOST),
            (&mut self.from_host, FROM_HOST),
        ] {
            if !adopted.contains(&program.1) {
                self.pins.attach_endpoint(program, ifname, endpoint)?;
            }
        }
        Ok(())
    }

    /// Makes `endpoint` the host endpoint: the node itself, as Cilium's host firewall sees it.
    /// Its ingress slots judge every packet addressed to one of the node's addresses (those the
    /// ipcache maps to `IDENTITY_HOST`) and its egress slots every packet the node sends from
    /// one, on every endpoint's interface and node interface ([`Datapath::attach_network`]),
    /// before the programs of the pod or interface judge it too: a pod's packet to the node
    /// needs the pod's egress and the host's ingress to allow it. The host's connections are
    /// tracked as one endpoint's, so their replies pass whichever interface they cross. Create
    /// the endpoint like any other ([`Datapath::load_slot`]); `load_slot`, `rewrite_slot`,
    /// `set_candidate`, `set_mode`, `flip`, `flip_all`, `counters`, `flows`, `events` and
    /// `state` (whose `ifindex` is [`HOST_ENDPOINT_IFINDEX`]) work for it as for a pod, and
    /// [`Datapath::detach`] removes it. L7 rules are not supported for the host: a redirect
    /// verdict drops as `l7-unsupported`. Idempotent; a node has one host endpoint at a time.
    pub fn attach_host(&mut self, endpoint: EndpointId) -> Result<()> {
        if matches!(self.config(endpoint), Ok(config) if config.ifindex != 0 && config.ifindex != HOST_ENDPOINT_IFINDEX)
        {
            return Err(Error::AlreadyAttached { endpoint });
        }
        match self.endpoints.get(&HOST_ENDPOINT_IFINDEX, 0) {
            Ok(host) if host.endpoint == endpoint => return Ok(()),
            Ok(host) => return Err(Error::HostEndpointTaken { endpoint, host: host.endpoint }),
            Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(Error::Map { map: "ENDPOINTS", endpoint: Some(endpoint), source }),
        }
        self.ensure_endpoint(endpoint)?;
        let mut config = self.config(endpoint)?;
        config.ifindex = HOST_ENDPOINT_IFINDEX;
        self.write_config(config)?;
        // The hook judging a connection of the host's to a Service after translation finds it here.
        self.endpoint_ifindex
            .set(config.index, HOST_ENDPOINT_IFINDEX, 0)
            .map_err(map_error("ENDPOINT_IFINDEX", endpoint))?;
        self.bump_version()
    }

    /// Detaches the endpoint (the host endpoint too) and forgets its config, counters and policy
    /// slots.
    pub fn detach(&mut self, endpoint: EndpointId) -> Result<()> {
        let config = self.config(endpoint);
        let ifname = config.as_ref().ok().and_then(|c| interface_name(c.ifindex));
        if let Some(ifname) = &ifname {
            self.pins.release_to_network(endpoint, ifname)?;
        }
        self.pins.detach_endpoint(endpoint)?;
        if let Some(ifname) = &ifname {
            self.attach_network_ingress(ifname)?;
        }
        match config {
            Ok(config) => {
                if config.ifindex != 0 {
                    ignore_missing(self.endpoints.remove(&config.ifindex)).map_err(map_error("ENDPOINTS", endpoint))?;
                    self.bump_version()?;
                }
                ignore_missing(self.endpoint_config.remove(&endpoint))
                    .map_err(map_error("ENDPOINT_CONFIG", endpoint))?;
                // The counters are zeroed when the index is handed out again.
                if let Some(used) = self.used_indexes.get_mut(config.index as usize) {
                    *used = false;
                }
            }
            Err(Error::UnknownEndpoint(_)) => {}
            Err(e) => return Err(e),
        }
        for slot in [Slot::A, Slot::B] {
            ignore_missing(self.policy_slots.remove(&SlotKey::new(endpoint, slot)))
                .map_err(map_error("POLICY_SLOTS", endpoint))?;
        }
        Ok(())
    }

    /// Attaches `deferred_egress` to the egress of `ifname`, an interface of the node that is no
    /// endpoint's (an uplink, a tunnel): a Service connection whose backend is off the node leaves
    /// through one, and its source's egress is judged there; and `from_network` to its ingress,
    /// where the replies to the L7 proxy's upstream connections come back; and before them, the
    /// host endpoint's programs (see [`Datapath::attach_host`]). Idempotent; the links are
    /// pinned, so they stay attached while no agent runs.
    pub fn attach_network(&mut self, ifname: &str) -> Result<()> {
        self.pins.attach_network((&mut self.deferred_egress, DEFERRED_EGRESS), ifname)?;
        self.attach_network_ingress(ifname)?;
        // Last: each goes before everything on its hook.
        self.pins.attach_network((&mut self.to_host, TO_HOST), ifname)?;
        self.pins.attach_network((&mut self.from_host, FROM_HOST), ifname)
    }

    fn attach_network_ingress(&mut self, ifname: &str) -> Result<()> {
        self.pins.attach_network((&mut self.from_network, FROM_NETWORK), ifname)
    }

    /// Detaches the programs from `ifname` (gone or no longer a node interface).
    pub fn detach_network(&mut self, ifname: &str) -> Result<()> {
        for program in [FROM_NETWORK, DEFERRED_EGRESS, TO_HOST, FROM_HOST] {
            self.pins.detach_network(program, ifname)?;
        }
        Ok(())
    }

    /// The mark a packet to a Service leaves `endpoint`'s hook with: what tells the hook after
    /// translation whose egress to judge.
    pub fn service_mark(&self, endpoint: EndpointId) -> Result<u32> {
        Ok((self.config(endpoint)?.index + 1) << palisade_common::SERVICE_MARK_SHIFT)
    }

    /// The node interfaces `deferred_egress` is attached to.
    pub fn network_interfaces(&self) -> Result<Vec<String>> {
        self.pins.network_links()
    }

    /// Endpoints with a config, attached or not.
    pub fn endpoints(&self) -> Result<Vec<EndpointId>> {
        self.endpoint_config.keys().collect::<Result<_, _>>().map_err(|source| Error::Map {
            map: "ENDPOINT_CONFIG",
            endpoint: None,
            source,
        })
    }

    /// Maps `addr/prefix_len` (either family) to `identity`. Addresses without a matching prefix
    /// are "world" (`world-ipv6` for IPv6). Established connections are judged again on their
    /// next forward packet.
    pub fn set_ipcache(&mut self, addr: impl Into<IpAddr>, prefix_len: u8, identity: u32) -> Result<()> {
        match addr.into() {
            IpAddr::V4(v4) => self.ipcache.insert(&ipcache_key(v4, prefix_len), identity, 0),
            IpAddr::V6(v6) => self.ipcache6.insert(&ipcache6_key(v6, prefix_len), identity, 0),
        }
        .map_err(ipcache_error)?;
        self.bump_version()
    }

    /// The identity the program finds for `addr/prefix_len`: the longest ipcache prefix that
    /// covers it, as a packet's lookup finds it; `None` for "world" (no prefix covers it).
    pub fn ipcache_identity(&self, addr: impl Into<IpAddr>, prefix_len: u8) -> Result<Option<u32>> {
        let found = match addr.into() {
            IpAddr::V4(v4) => self.ipcache.get(&ipcache_key(v4, prefix_len), 0),
            IpAddr::V6(v6) => self.ipcache6.get(&ipcache6_key(v6, prefix_len), 0),
        };
        match found {
            Ok(identity) => Ok(Some(identity)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(ipcache_error(source)),
        }
    }

    pub fn remove_ipcache(&mut self, addr: impl Into<IpAddr>, prefix_len: u8) -> Result<()> {
        ignore_missing(match addr.into() {
            IpAddr::V4(v4) => self.ipcache.remove(&ipcache_key(v4, prefix_len)),
            IpAddr::V6(v6) => self.ipcache6.remove(&ipcache6_key(v6, prefix_len)),
        })
        .map_err(ipcache_error)?;
        self.bump_version()
    }

    /// Tells the program where the node's L7 proxy listens (on 127.0.0.1), or that none does
    /// (`None`): redirected connections then fail closed (`l7-unsupported`). Connections
    /// judged before are judged again.
    pub fn set_proxy_port(&mut self, port: Option<u16>) -> Result<()> {
        let value = u32::from(port.unwrap_or(0));
        self.node_state.set(NODE_STATE_PROXY_PORT, value, 0).map_err(|source| Error::Map {
            map: "NODE_STATE",
            endpoint: None,
            source,
        })?;
        self.bump_version()
    }

    /// Retires every decision cached in conntrack: the next packet of each connection is judged
    /// again. After the change, never before: a packet reads the version before what it
    /// versions, so one that saw the old state cached its decision under the old version.
    fn bump_version(&mut self) -> Result<()> {
        let map_error = |source| Error::Map { map: "NODE_STATE", endpoint: None, source };
        let version = self.node_state.get(&NODE_STATE_VERSION, 0).map_err(map_error)?.wrapping_add(1);
        self.node_state.set(NODE_STATE_VERSION, version, 0).map_err(map_error)
    }

    /// Replaces the whole content of `slot` with `entries` in one step: a new policy map is
    /// filled aside, then swapped in. The swap waits for an RCU grace period (milliseconds), which
    /// is why promotions never do this: load the idle slot ahead of time, then [`Self::flip`].
    pub fn load_slot(&mut self, endpoint: EndpointId, slot: Slot, entries: &[PolicyEntry]) -> Result<()> {
        if entries.len() > MAX_POLICY_ENTRIES as usize {
            return Err(Error::TooManyEntries { endpoint, entries: entries.len(), max: MAX_POLICY_ENTRIES });
        }
        self.ensure_endpoint(endpoint)?;
        let mut policy = PolicySlot::create(MAX_POLICY_ENTRIES, BPF_F_NO_PREALLOC)
            .map_err(map_error("POLICY_SLOTS (inner)", endpoint))?;
        write_entries(&mut policy, entries, endpoint)?;
        self.policy_slots
            .insert(SlotKey::new(endpoint, slot), &policy, 0)
            .map_err(map_error("POLICY_SLOTS", endpoint))?;
        // Only now, with the new map in place, switch cached verdicts to a fresh version: packets
        // between the two updates can only have cached under the version being retired.
        self.renew_slot_generation(endpoint, slot)
    }

    /// Makes `slot`, which holds `from`, hold `to` (both sorted by key), in place: only the keys
    /// that differ are written, then the ones `to` lacks deleted. The slot's write sequence is
    /// odd meanwhile, so the program never compares a half-written slot as a candidate nor
    /// caches a verdict from it. A slot never loaded is loaded whole. On a failed write the
    /// slot is put back to `from`; if even that fails it stays marked as being written (never
    /// compared) until a later rewrite succeeds.
    pub fn rewrite_slot(
        &mut self,
        endpoint: EndpointId,
        slot: Slot,
        from: &[PolicyEntry],
        to: &[PolicyEntry],
    ) -> Result<()> {
        if to.len() > MAX_POLICY_ENTRIES as usize {
            return Err(Error::TooManyEntries { endpoint, entries: to.len(), max: MAX_POLICY_ENTRIES });
        }
        let key = SlotKey::new(endpoint, slot);
        let mut policy: PolicySlot = match self.policy_slots.get(&key, 0) {
            Ok(policy) => policy,
            Err(MapError::KeyNotFound) => return self.load_slot(endpoint, slot, to),
            Err(source) => return Err(Error::Map { map: "POLICY_SLOTS", endpoint: Some(endpoint), source }),
        };
        let (upserts, removals) = slot_changes(from, to);
        if upserts.is_empty() && removals.is_empty() {
            return Ok(());
        }
        let sequence = slot.writes_index(self.config(endpoint)?.index);
        let writes_error = map_error("SLOT_WRITES", endpoint);
        // Odd while writing; a failed write may have left it odd already.
        let writing = self.slot_writes.get(&sequence, 0).map_err(&writes_error)? | 1;
        self.slot_writes.set(sequence, writing, 0).map_err(&writes_error)?;
        if let Err(error) = change_entries(&mut policy, &upserts, &removals, endpoint) {
            let (undo_upserts, undo_removals) = slot_changes(to, from);
            if change_entries(&mut policy, &undo_upserts, &undo_removals, endpoint).is_ok() {
                self.slot_writes.set(sequence, writing.wrapping_add(1), 0).map_err(&writes_error)?;
            }
            return Err(error);
        }
        // Connections whose verdict was cached under the old content are judged again.
        self.renew_slot_generation(endpoint, slot)?;
        self.slot_writes.set(sequence, writing.wrapping_add(1), 0).map_err(&writes_error)?;
        self.bump_version()
    }

    fn renew_slot_generation(&mut self, endpoint: EndpointId, slot: Slot) -> Result<()> {
        let generation = self.next_slot_generation()?;
        self.update_config(endpoint, |config, _| {
            config.slot_generation[slot.index()] = generation;
            Ok(())
        })
    }

    /// What `slot` holds (empty when never loaded), sorted by key: how a restarted agent learns
    /// what it programmed.
    pub fn slot_entries(&self, endpoint: EndpointId, slot: Slot) -> Result<Vec<PolicyEntry>> {
        let policy: PolicySlot = match self.policy_slots.get(&SlotKey::new(endpoint, slot), 0) {
            Ok(policy) => policy,
            Err(MapError::KeyNotFound) => return Ok(Vec::new()),
            Err(source) => return Err(Error::Map { map: "POLICY_SLOTS", endpoint: Some(endpoint), source }),
        };
        let mut entries = Vec::new();
        for item in policy.iter() {
            let (key, value) = item.map_err(map_error("POLICY_SLOTS (inner)", endpoint))?;
            let key = PolicyKey::from_data(key.prefix_len(), key.data());
            entries.push(PolicyEntry { key, value: value.with_l4_prefix_len(0) });
        }
        entries.sort_by_key(|e| e.key);
        Ok(entries)
    }

    /// Marks `slot` as the candidate evaluated beside the enforced slot, or stops shadowing.
    pub fn set_candidate(&mut self, endpoint: EndpointId, candidate: Option<Slot>) -> Result<()> {
        self.update_config(endpoint, |config, selection| {
            let selection = SlotSelection::new(selection.enforced(), candidate);
            config.by_epoch = [selection; 2];
            Ok(())
        })
    }

    pub fn set_mode(&mut self, endpoint: EndpointId, mode: Mode) -> Result<()> {
        self.update_config(endpoint, |config, _| {
            config.set_mode(mode);
            Ok(())
        })
    }

    /// Promotes the candidate: it becomes enforced and the previously enforced slot becomes the
    /// candidate (still shadow-evaluated, for a rollback watch; clear it with
    /// [`Self::set_candidate`]). One update of the endpoint's config value; the version bump
    /// after it makes established connections see it on their next packet.
    pub fn flip(&mut self, endpoint: EndpointId) -> Result<()> {
        self.update_config(endpoint, |config, selection| {
            config.by_epoch = [promoted(endpoint, selection)?; 2];
            Ok(())
        })
    }

    /// Promotes the candidates of `endpoints` all at once: the promoted selections are staged in
    /// the inactive half of each config, then one update of the node epoch switches every packet
    /// of every endpoint to them.
    pub fn flip_all(&mut self, endpoints: &[EndpointId]) -> Result<()> {
        let epoch = self.epoch()?;
        let (active, staged) = ((epoch & 1) as usize, ((epoch + 1) & 1) as usize);
        let mut configs = Vec::with_capacity(endpoints.len());
        for &endpoint in endpoints {
            let mut config = self.config(endpoint)?;
            config.by_epoch[staged] = promoted(endpoint, config.by_epoch[active])?;
            configs.push(config);
        }
        self.write_configs(&configs)?;
        self.node_state.set(NODE_STATE_EPOCH, epoch.wrapping_add(1), 0).map_err(|source| Error::Map {
            map: "NODE_STATE",
            endpoint: None,
            source,
        })?;
        self.bump_version()?;
        // Off the promotion path: make both halves agree again, so that a later node-wide flip
        // without these endpoints leaves them as they are (the stale half is inactive now).
        for config in &mut configs {
            config.by_epoch[active] = config.by_epoch[staged];
        }
        self.write_configs(&configs)
    }

    pub fn state(&self, endpoint: EndpointId) -> Result<EndpointState> {
        let config = self.config(endpoint)?;
        let selection = config.by_epoch[(self.epoch()? & 1) as usize];
        Ok(EndpointState {
            mode: config.mode(),
            enforced: selection.enforced(),
            candidate: selection.candidate(),
            ifindex: config.ifindex,
        })
    }

    /// The endpoint's packet counters, summed over CPUs.
    pub fn counters(&self, endpoint: EndpointId) -> Result<EndpointCounters> {
        let index = self.config(endpoint)?.index;
        let per_cpu = self.counters.get(&index, 0).map_err(map_error("COUNTERS", endpoint))?;
        Ok(per_cpu.iter().fold(EndpointCounters::default(), |mut sum, cpu| {
            for (total, n) in sum.slot_packets.iter_mut().zip(cpu.slot_packets) {
                *total += n;
            }
            sum.allowed += cpu.allowed;
            sum.denied += cpu.denied;
            sum.audited += cpu.audited;
            sum.shadow_diffs += cpu.shadow_diffs;
            sum.replies += cpu.replies;
            sum.unenforced += cpu.unenforced;
            sum.events_lost += cpu.events_lost;
            sum.invalid_source += cpu.invalid_source;
            sum.unjudged += cpu.unjudged;
            sum.connections += cpu.connections;
            sum
        }))
    }

    /// Every flow the program counted: drops, audit verdicts and shadow differences.
    pub fn flows(&self) -> Result<Vec<Flow>> {
        let mut flows = Vec::new();
        for entry in self.flows.iter() {
            let (key, per_cpu) = entry.map_err(|source| Error::Map { map: "FLOWS", endpoint: None, source })?;
            // The CPU that created the flow holds its first-seen time and cookies.
            let creator = per_cpu.iter().find(|stats| stats.first_seen_ns != 0).copied();
            flows.push(Flow {
                key,
                packets: per_cpu.iter().map(|stats| stats.packets).sum(),
                first_seen_ns: creator.map_or(0, |c| c.first_seen_ns),
                enforced_cookie: creator.map_or(0, |c| c.enforced_cookie),
                candidate_cookie: creator.map_or(0, |c| c.candidate_cookie),
            });
        }
        Ok(flows)
    }

    /// Forgets the counted flows, e.g. when a new audit period starts; their next packet makes
    /// them new flows again.
    pub fn clear_flows(&mut self) -> Result<()> {
        let keys: Vec<FlowKey> = self.flows.keys().filter_map(|key| key.ok()).collect();
        for key in keys {
            ignore_missing(self.flows.remove(&key)).map_err(|source| Error::Map {
                map: "FLOWS",
                endpoint: Some(key.endpoint),
                source,
            })?;
        }
        Ok(())
    }

    /// The consumer of new-flow events. There should be one per node.
    pub fn events(&self) -> Result<EventReader> {
        Ok(EventReader::new(self.pins.map("EVENTS")?))
    }

    /// Creates the endpoint's config (enforce slot A, no candidate) and counters if missing.
    fn ensure_endpoint(&mut self, endpoint: EndpointId) -> Result<()> {
        match self.config(endpoint) {
            Ok(_) => return Ok(()),
            Err(Error::UnknownEndpoint(_)) => {}
            Err(e) => return Err(e),
        }
        let index = self
            .used_indexes
            .iter()
            .position(|used| !used)
            .ok_or(Error::TooManyEndpoints { endpoint, max: MAX_ENDPOINTS })? as u32;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::Cpus(e))?;
        let zero = aya::maps::PerCpuValues::try_from(vec![EndpointCounters::default(); cpus]).map_err(Error::Cpus)?;
        self.counters.set(index, zero, 0).map_err(map_error("COUNTERS", endpoint))?;
        self.write_config(EndpointConfig::new(endpoint, index))?;
        self.used_indexes[index as usize] = true;
        Ok(())
    }

    /// Registers an endpoint (enforcing an empty slot A, no candidate) without loading policy
    /// or attaching it; `load_slot` and `attach` do this on their own.
    pub fn add_endpoint(&mut self, endpoint: EndpointId) -> Result<()> {
        self.ensure_endpoint(endpoint)
    }

    /// Runs an Ethernet frame through the program `repeat` times (BPF_PROG_TEST_RUN) as if it
    /// crossed `hook` of interface `ifindex` (in the caller's network namespace). It counts and
    /// tracks like real traffic. For tracing a verdict and for benchmarks.
    pub fn run_frame(&self, hook: Hook, ifindex: u32, frame: &[u8], repeat: u32) -> Result<FrameRun> {
        self.run_marked_frame(hook, ifindex, 0, frame, repeat)
    }

    /// [`Datapath::run_frame`] for a packet carrying `mark`, as a Service connection's packets
    /// do after their source's hook ([`Datapath::service_mark`]).
    pub fn run_marked_frame(&self, hook: Hook, ifindex: u32, mark: u32, frame: &[u8], repeat: u32) -> Result<FrameRun> {
        let (program, name) = match hook {
            Hook::FromEndpoint => (&self.from_endpoint, "from_endpoint"),
            Hook::ToEndpoint => (&self.to_endpoint, "to_endpoint"),
            Hook::DeferredEgress => (&self.deferred_egress, "deferred_egress"),
            Hook::ToHost => (&self.to_host, "to_host"),
            Hook::FromHost => (&self.from_host, "from_host"),
        };
        // A `struct __sk_buff` prefix up to `ifindex` (offset 40), the field the kernel uses to
        // pick the device; the mark is at offset 8.
        let mut context = [0u8; 44];
        context[8..12].copy_from_slice(&mark.to_ne_bytes());
        context[40..].copy_from_slice(&ifindex.to_ne_bytes());
        let result = program
            .test_run(TestRunOptions { data_in: Some(frame), ctx_in: Some(&context), repeat, ..TestRunOptions::new() })
            .map_err(|source| Error::Program { program: name, endpoint: None, source })?;
        // `deferred_egress` and the host's programs hand what they pass to the next program
        // ("next", -1).
        let hands_on = matches!(hook, Hook::DeferredEgress | Hook::ToHost | Hook::FromHost);
        let passed = result.return_value == 0 || (hands_on && result.return_value == u32::MAX);
        Ok(FrameRun { passed, per_run: result.duration })
    }

    /// Slot generations are unique node-wide and survive restarts, so no cached verdict of a
    /// removed endpoint or an older load can ever match again.
    fn next_slot_generation(&mut self) -> Result<u32> {
        let map_error = |source| Error::Map { map: "NODE_STATE", endpoint: None, source };
        // Never 0 (never loaded).
        let generation = match self.node_state.get(&NODE_STATE_GENERATION, 0).map_err(map_error)?.wrapping_add(1) {
            0 => 1,
            generation => generation,
        };
        self.node_state.set(NODE_STATE_GENERATION, generation, 0).map_err(map_error)?;
        Ok(generation)
    }

    fn epoch(&self) -> Result<u32> {
        self.node_state.get(&NODE_STATE_EPOCH, 0).map_err(|source| Error::Map {
            map: "NODE_STATE",
            endpoint: None,
            source,
        })
    }

    fn config(&self, endpoint: EndpointId) -> Result<EndpointConfig> {
        self.endpoint_config.get(&endpoint, 0).map_err(|source| match source {
            MapError::KeyNotFound => Error::UnknownEndpoint(endpoint),
            source => Error::Map { map: "ENDPOINT_CONFIG", endpoint: Some(endpoint), source },
        })
    }

    /// Rewrites an endpoint's config in one map update, then retires the decisions cached under
    /// the old one. `change` gets the selection in force.
    fn update_config(
        &mut self,
        endpoint: EndpointId,
        change: impl FnOnce(&mut EndpointConfig, SlotSelection) -> Result<()>,
    ) -> Result<()> {
        let mut config = self.config(endpoint)?;
        let selection = config.by_epoch[(self.epoch()? & 1) as usize];
        change(&mut config, selection)?;
        self.write_config(config)?;
        self.bump_version()
    }

    /// Writes an endpoint's config: for an attached endpoint the one update the program sees,
    /// then the record. The caller bumps the version once the change is complete. (Only
    /// `attach` changes the interface, so it alone writes `ENDPOINT_IFINDEX`: a flip of 1,000
    /// endpoints makes 2,000 fewer syscalls.)
    /// [`Self::write_config`] for many endpoints: one batch update per map.
    fn write_configs(&mut self, configs: &[EndpointConfig]) -> Result<()> {
        let (ifindexes, attached): (Vec<u32>, Vec<EndpointConfig>) =
            configs.iter().filter(|config| config.ifindex != 0).map(|config| (config.ifindex, *config)).unzip();
        let endpoints: Vec<EndpointId> = configs.iter().map(|config| config.endpoint).collect();
        let batch_error = |map| move |source| Error::Batch { map, source };
        update_batch(self.endpoints.map(), &ifindexes, &attached).map_err(batch_error("ENDPOINTS"))?;
        update_batch(self.endpoint_config.map(), &endpoints, configs).map_err(batch_error("ENDPOINT_CONFIG"))
    }

    fn write_config(&mut self, config: EndpointConfig) -> Result<()> {
        let endpoint = config.endpoint;
        if config.ifindex != 0 {
            self.endpoints.insert(config.ifindex, config, 0).map_err(map_error("ENDPOINTS", endpoint))?;
        }
        self.endpoint_config.insert(endpoint, config, 0).map_err(map_error("ENDPOINT_CONFIG", endpoint))
    }
}

fn promoted(endpoint: EndpointId, selection: SlotSelection) -> Result<SlotSelection> {
    let candidate = selection.candidate().ok_or(Error::NoCandidate(endpoint))?;
    Ok(SlotSelection::new(candidate, Some(selection.enforced())))
}

/// Keys to write and keys to delete to turn `from` into `to` (both sorted by key): one walk
/// through both, as slots can hold thousands of entries and only a few change.
pub fn slot_changes(from: &[PolicyEntry], to: &[PolicyEntry]) -> (Vec<PolicyEntry>, Vec<PolicyKey>) {
    let (mut upserts, mut removals) = (Vec::new(), Vec::new());
    let (mut old, mut new) = (from.iter().peekable(), to.iter().peekable());
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(o), Some(n)) if o.key == n.key => {
                if o != n {
                    upserts.push(**n);
                }
                old.next();
                new.next();
            }
            (Some(o), Some(n)) if o.key < n.key => {
                removals.push(o.key);
                old.next();
            }
            (Some(o), None) => {
                removals.push(o.key);
                old.next();
            }
            (_, Some(n)) => {
                upserts.push(**n);
                new.next();
            }
        }
    }
    (upserts, removals)
}

/// Writes `upserts`, then deletes `removals`: a key never disappears before its replacement.
fn change_entries(
    policy: &mut PolicySlot,
    upserts: &[PolicyEntry],
    removals: &[PolicyKey],
    endpoint: EndpointId,
) -> Result<()> {
    write_entries(policy, upserts, endpoint)?;
    for removed in removals {
        ignore_missing(policy.remove(&policy_key(removed))).map_err(map_error("POLICY_SLOTS (inner)", endpoint))?;
    }
    Ok(())
}

fn write_entries(policy: &mut PolicySlot, entries: &[PolicyEntry], endpoint: EndpointId) -> Result<()> {
    for entry in entries {
        let value = entry.value.with_l4_prefix_len(entry.key.l4_prefix_len());
        policy.insert(&policy_key(&entry.key), value, 0).map_err(map_error("POLICY_SLOTS (inner)", endpoint))?;
    }
    Ok(())
}

fn policy_key(key: &PolicyKey) -> Key<PolicyMatch> {
    Key::new(key.prefix_len, key.data())
}

fn ipcache_key(addr: Ipv4Addr, prefix_len: u8) -> Key<u32> {
    Key::new(prefix_len.min(32) as u32, u32::from_ne_bytes(addr.octets()))
}

fn ipcache6_key(addr: Ipv6Addr, prefix_len: u8) -> Key<[u8; 16]> {
    Key::new(prefix_len.min(128) as u32, addr.octets())
}

fn ipcache_error(source: MapError) -> Error {
    Error::Map { map: "IPCACHE", endpoint: None, source }
}

fn ifindex(ifname: &str) -> std::io::Result<u32> {
    let name = CString::new(ifname).map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// The name of interface `ifindex` in the caller's network namespace, while it exists.
pub fn interface_name(ifindex: u32) -> Option<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into the buffer.
    Some(unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned())
}

fn map_error(map: &'static str, endpoint: EndpointId) -> impl Fn(MapError) -> Error {
    move |source| Error::Map { map, endpoint: Some(endpoint), source }
}

/// Removing what is already gone is fine.
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(ref e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use palisade_common::{Direction, Protocol, Verdict};

    use super::*;

    #[test]
    fn slot_changes_write_changed_and_new_keys_and_delete_the_rest() {
        use std::collections::BTreeSet;
        let entry = |identity: u32, port: u16, cookie: u32| PolicyEntry {
            key: PolicyKey::new(identity, Direction::Ingress, Some(Protocol::TCP), port, 16),
            value: PolicyValue::new(Verdict::Allow, cookie),
        };
        let mut old = vec![entry(300, 80, 1), entry(300, 443, 1), entry(301, 80, 1), entry(303, 80, 1)];
        let mut new = vec![entry(300, 80, 1), entry(300, 443, 2), entry(302, 80, 1), entry(304, 80, 1)];
        old.sort_by_key(|e| e.key);
        new.sort_by_key(|e| e.key);
        let (upserts, removals) = slot_changes(&old, &new);
        let keys = |entries: &[PolicyEntry]| entries.iter().map(|e| e.key).collect::<BTreeSet<_>>();
        assert_eq!(keys(&upserts), keys(&[entry(300, 443, 2), entry(302, 80, 1), entry(304, 80, 1)]));
        assert!(upserts.contains(&entry(300, 443, 2)), "the new value");
        assert_eq!(removals.iter().copied().collect::<BTreeSet<_>>(), keys(&[entry(301, 80, 1), entry(303, 80, 1)]));
        assert_eq!(slot_changes(&new, &new), (vec![], vec![]));
        assert_eq!(slot_changes(&[], &new).0, new);
        assert_eq!(slot_changes(&new, &[]).1, new.iter().map(|e| e.key).collect::<Vec<_>>());
    }
}
