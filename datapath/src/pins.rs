//! The bpffs layout: `<dir>/maps/<MAP>`, `<dir>/programs/<program>`,
//! `<dir>/links/<endpoint>-<program>`, `<dir>/links/<prefix><interface>` (a node interface's, by
//! program: see [`NETWORK_LINKS`]), `<dir>/object/<sha256>` (the
//! digest of the eBPF object they came from) and `<dir>/attach/<mode>` (how the programs are
//! attached, see [`crate::attach`]). The links keep the programs attached while no process runs;
//! pinned maps keep their content.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use aya::{
    Ebpf,
    maps::{Map, MapData, MapError, ProgramArray},
    programs::SchedClassifier,
};

use crate::{
    AttachMode, EndpointId, Error, Result,
    attach::{DEFERRED_EGRESS, FROM_ENDPOINT, FROM_HOST, FROM_NETWORK, TO_ENDPOINT, TO_HOST},
};

const MAPS: [&str; 23] = [
    "IPCACHE",
    "IPCACHE6",
    "ENDPOINTS",
    "ENDPOINT_CONFIG",
    "ENDPOINT_IFINDEX",
    "SERVICE_ORIGINS",
    "NODE_STATE",
    "SLOT_WRITES",
    "FENCE",
    "VERDICT_CACHE",
    "POLICY_SLOTS",
    "CONNTRACK",
    "CONNTRACK6",
    "FAST_FLOWS",
    "FAST_FLOWS6",
    "FRAGMENTS",
    "FRAGMENTS6",
    "PACKET6",
    IPV6_PROGRAMS,
    "FLOWS",
    "COUNTERS",
    "EVENTS",
    "EVENT_TOKENS",
];
/// The programs attached to every endpoint (all but `from_endpoint` and `to_endpoint` also to
/// node interfaces).
const ENDPOINT_PROGRAMS: [&str; 5] = [FROM_ENDPOINT, TO_ENDPOINT, DEFERRED_EGRESS, TO_HOST, FROM_HOST];
/// The links an interface keeps when it turns from a node interface into an endpoint's, and
/// back: moved to the other's record, not replaced (tcx attaches a program once per hook, and an
/// unpinned link detaches only later, from a kernel work queue).
const SHARED_PROGRAMS: [&str; 3] = [TO_HOST, FROM_HOST, DEFERRED_EGRESS];
/// The IPv6 programs, by their slot in `IPV6_PROGRAMS` (`IPV6_PROGRAM_*`): the IPv4 programs
/// hand them IPv6 packets; they are attached nowhere.
const IPV6_PROGRAM_SLOTS: [(&str, u32); 10] = [
    ("from_endpoint_v6", palisade_common::IPV6_PROGRAM_FROM_ENDPOINT),
    ("to_endpoint_v6", palisade_common::IPV6_PROGRAM_TO_ENDPOINT),
    ("deferred_egress_v6", palisade_common::IPV6_PROGRAM_DEFERRED_EGRESS),
    ("from_endpoint_v6_verdict", palisade_common::IPV6_PROGRAM_FROM_ENDPOINT_VERDICT),
    ("to_endpoint_v6_verdict", palisade_common::IPV6_PROGRAM_TO_ENDPOINT_VERDICT),
    ("deferred_egress_v6_verdict", palisade_common::IPV6_PROGRAM_DEFERRED_EGRESS_VERDICT),
    ("to_host_v6", palisade_common::IPV6_PROGRAM_TO_HOST),
    ("from_host_v6", palisade_common::IPV6_PROGRAM_FROM_HOST),
    ("to_host_v6_verdict", palisade_common::IPV6_PROGRAM_TO_HOST_VERDICT),
    ("from_host_v6_verdict", palisade_common::IPV6_PROGRAM_FROM_HOST_VERDICT),
];
const IPV6_PROGRAMS: &str = "IPV6_PROGRAMS";
/// Every program (`from_network` goes to node interfaces' ingress), pinned in this order, so
/// the last one marks a complete pin directory: the IPv6 programs first, so no IPv4 program is
/// pinned before they are in its table.
const PROGRAMS: [&str; 16] = [
    IPV6_PROGRAM_SLOTS[0].0,
    IPV6_PROGRAM_SLOTS[1].0,
    IPV6_PROGRAM_SLOTS[2].0,
    IPV6_PROGRAM_SLOTS[3].0,
    IPV6_PROGRAM_SLOTS[4].0,
    IPV6_PROGRAM_SLOTS[5].0,
    IPV6_PROGRAM_SLOTS[6].0,
    IPV6_PROGRAM_SLOTS[7].0,
    IPV6_PROGRAM_SLOTS[8].0,
    IPV6_PROGRAM_SLOTS[9].0,
    FROM_NETWORK,
    FROM_ENDPOINT,
    TO_ENDPOINT,
    TO_HOST,
    FROM_HOST,
    DEFERRED_EGRESS,
];

#[derive(Clone, Debug)]
pub(crate) struct Pins {
    dir: PathBuf,
    mode: AttachMode,
}

impl Pins {
    /// Adopts the datapath pinned under `dir`, or loads `object` and pins it there first.
    /// `requested`: how to attach programs; by default the pinned datapath's way, or for a new
    /// one what the kernel supports.
    pub(crate) fn open(dir: &Path, object: &[u8], requested: Option<AttachMode>) -> Result<Self> {
        let pins = Pins { dir: dir.to_owned(), mode: requested.unwrap_or_else(AttachMode::detect) };
        if !pins.complete() {
            pins.load_and_pin(object)?;
            return Ok(pins);
        }
        pins.check_object(object)?;
        // Datapaths pinned before the mode was recorded attached with TCX, the only way then.
        let pinned = fs::read_dir(pins.dir.join("attach"))
            .ok()
            .and_then(|mut entries| entries.next()?.ok())
            .and_then(|entry| entry.file_name().to_str()?.parse().ok())
            .unwrap_or(AttachMode::Tcx);
        match requested {
            Some(requested) if requested != pinned => {
                Err(Error::AttachModeMismatch { dir: pins.dir, pinned, requested })
            }
            _ => Ok(Pins { mode: pinned, ..pins }),
        }
    }

    pub(crate) fn mode(&self) -> AttachMode {
        self.mode
    }

    fn complete(&self) -> bool {
        self.program_path(PROGRAMS[PROGRAMS.len() - 1]).exists()
    }

    /// Adopting is only sound for the build that pinned: another one may lay out its maps
    /// differently. Each pin directory records the digest of the object it was loaded from.
    fn check_object(&self, object: &[u8]) -> Result<()> {
        let expected = object_digest(object);
        let pinned = fs::read_dir(self.dir.join("object"))
            .ok()
            .and_then(|mut entries| entries.next()?.ok())
            .map_or_else(|| "unknown".into(), |entry| entry.file_name().to_string_lossy().into_owned());
        if pinned != expected {
            return Err(Error::PinnedByAnotherBuild { dir: self.dir.clone(), pinned, expected });
        }
        Ok(())
    }

    /// Loads the object and pins its maps, then its programs. Leftovers of an interrupted
    /// earlier attempt are replaced.
    fn load_and_pin(&self, object: &[u8]) -> Result<()> {
        for sub in ["object", "attach", "maps", "programs"] {
            let path = self.dir.join(sub);
            match fs::remove_dir_all(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(Error::PinDir { path, source: e });
                }
                _ => {}
            }
        }
        for sub in ["maps", "programs", "links"] {
            let path = self.dir.join(sub);
            fs::create_dir_all(&path).map_err(|source| Error::PinDir { path, source })?;
        }
        // Before the programs, whose last pin marks the directory complete. A directory, because
        // bpffs holds no regular files.
        for path in
            [self.dir.join("object").join(object_digest(object)), self.dir.join("attach").join(self.mode.to_string())]
        {
            fs::create_dir_all(&path).map_err(|source| Error::PinDir { path, source })?;
        }
        let mut ebpf = Ebpf::load(object)?;
        for name in MAPS {
            let map = ebpf.map(name).ok_or(Error::MissingInObject(name))?;
            let path = self.map_path(name);
            map.pin(&path).map_err(|source| Error::Pin { path, source })?;
        }
        let map_error = |source| Error::Map { map: IPV6_PROGRAMS, endpoint: None, source };
        let mut ipv6_programs =
            ProgramArray::try_from(ebpf.take_map(IPV6_PROGRAMS).ok_or(Error::MissingInObject(IPV6_PROGRAMS))?)
                .map_err(map_error)?;
        for name in PROGRAMS {
            let program_error = |source| Error::Program { program: name, endpoint: None, source };
            let program: &mut SchedClassifier =
                ebpf.program_mut(name).ok_or(Error::MissingInObject(name))?.try_into().map_err(program_error)?;
            program.load().map_err(program_error)?;
            if let Some(&(_, slot)) = IPV6_PROGRAM_SLOTS.iter().find(|(program, _)| *program == name) {
                let fd = program.fd().map_err(program_error)?;
                ipv6_programs.set(slot, fd, 0).map_err(map_error)?;
            }
            let path = self.program_path(name);
            program.pin(&path).map_err(|source| Error::Pin { path, source })?;
        }
        Ok(())
    }

    pub(crate) fn map<M: TryFrom<Map, Error = MapError>>(&self, name: &'static str) -> Result<M> {
        let map_error = |source| Error::Map { map: name, endpoint: None, source };
        let data = MapData::from_pin(self.map_path(name)).map_err(map_error)?;
        M::try_from(Map::from_map_data(data).map_err(map_error)?).map_err(map_error)
    }

    pub(crate) fn program(&self, name: &'static str) -> Result<SchedClassifier> {
        SchedClassifier::from_pin(self.program_path(name)).map_err(|source| Error::Program {
            program: name,
            endpoint: None,
            source,
        })
    }

    pub(crate) fn link_pinned(&self, endpoint: EndpointId) -> bool {
        ENDPOINT_PROGRAMS.iter().all(|program| self.link_path(endpoint, program).exists())
    }

    /// Attaches `program` (pinned as `name`) to endpoint `endpoint`'s interface `ifname`.
    pub(crate) fn attach_endpoint(
        &self,
        (program, name): (&mut SchedClassifier, &'static str),
        ifname: &str,
        endpoint: EndpointId,
    ) -> Result<()> {
        self.mode.attach(program, name, ifname, &self.link_path(endpoint, name)).map_err(|source| Error::Hook {
            action: "attaching",
            program: name,
            target: format!("interface {ifname} (endpoint {endpoint})"),
            source: source.into(),
        })
    }

    /// Attaches `program` (pinned as `name`) to node interface `ifname`, unless it is already.
    pub(crate) fn attach_network(
        &self,
        (program, name): (&mut SchedClassifier, &'static str),
        ifname: &str,
    ) -> Result<()> {
        let record = self.network_link_path(name, ifname);
        if record.exists() {
            return Ok(());
        }
        self.mode.attach(program, name, ifname, &record).map_err(|source| Error::Hook {
            action: "attaching",
            program: name,
            target: format!("node interface {ifname}"),
            source: source.into(),
        })
    }

    /// Detaches the endpoint's programs.
    pub(crate) fn detach_endpoint(&self, endpoint: EndpointId) -> Result<()> {
        for program in ENDPOINT_PROGRAMS {
            self.detach(program, self.link_path(endpoint, program), || format!("endpoint {endpoint}"))?;
        }
        Ok(())
    }

    /// Detaches `program` from node interface `ifname`.
    pub(crate) fn detach_network(&self, program: &'static str, ifname: &str) -> Result<()> {
        self.detach(program, self.network_link_path(program, ifname), || format!("node interface {ifname}"))
    }

    fn detach(&self, program: &'static str, record: PathBuf, target: impl Fn() -> String) -> Result<()> {
        self.mode.detach(program, &record).map_err(|source| Error::Hook {
            action: "detaching",
            program,
            target: target(),
            source: source.into(),
        })
    }

    /// Makes the [`SHARED_PROGRAMS`] links of node interface `ifname` that it has `endpoint`'s
    /// own, and returns which. Its `from_network` link goes: an endpoint's ingress is
    /// `from_endpoint`'s.
    pub(crate) fn adopt_network_links(&self, ifname: &str, endpoint: EndpointId) -> Result<Vec<&'static str>> {
        self.detach_network(FROM_NETWORK, ifname)?;
        let mut adopted = Vec::new();
        for program in SHARED_PROGRAMS {
            if move_link(&self.network_link_path(program, ifname), &self.link_path(endpoint, program))? {
                adopted.push(program);
            }
        }
        Ok(adopted)
    }

    /// The reverse of [`Pins::adopt_network_links`]: the interface of a detached endpoint that is
    /// still there stays judged as a node interface, without a gap.
    pub(crate) fn release_to_network(&self, endpoint: EndpointId, ifname: &str) -> Result<()> {
        for program in SHARED_PROGRAMS {
            move_link(&self.link_path(endpoint, program), &self.network_link_path(program, ifname))?;
        }
        Ok(())
    }

    /// Node interface `ifname`'s link of `program`.
    fn network_link_path(&self, program: &str, ifname: &str) -> PathBuf {
        let (_, prefix) = NETWORK_LINKS
            .into_iter()
            .find(|(p, _)| *p == program)
            .unwrap_or_else(|| unreachable!("{program} is not attached to node interfaces"));
        self.dir.join("links").join(format!("{prefix}{ifname}"))
    }

    /// The node interfaces `deferred_egress` is attached to.
    pub(crate) fn network_links(&self) -> Result<Vec<String>> {
        let path = self.dir.join("links");
        let entries = fs::read_dir(&path).map_err(|source| Error::PinDir { path: path.clone(), source })?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| Error::PinDir { path: path.clone(), source })?;
            if let Some(ifname) = entry.file_name().to_str().and_then(|n| n.strip_prefix(NETWORK_LINKS[0].1)) {
                names.push(ifname.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Detaches every program and removes the directory.
    pub(crate) fn remove_all(&self) -> Result<()> {
        let path = self.dir.join("links");
        let entries = match fs::read_dir(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            entries => entries.and_then(Iterator::collect).map_err(|source| Error::PinDir { path, source })?,
        };
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let network = NETWORK_LINKS.into_iter().find(|(_, prefix)| name.starts_with(prefix)).map(|(p, _)| p);
            let Some(program) =
                network.or_else(|| ENDPOINT_PROGRAMS.into_iter().find(|p| name.ends_with(&format!("-{p}"))))
            else {
                continue;
            };
            self.detach(program, entry.path(), || name.clone())?;
        }
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::PinDir { path: self.dir.clone(), source: e }),
            _ => Ok(()),
        }
    }

    fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    fn program_path(&self, name: &str) -> PathBuf {
        self.dir.join("programs").join(name)
    }

    fn link_path(&self, endpoint: EndpointId, program: &str) -> PathBuf {
        self.dir.join("links").join(format!("{endpoint}-{program}"))
    }
}

/// What names the pin of a node interface's link of each program (endpoint links start with a
/// number; no prefix starts another). `deferred_egress`'s first: one per node interface.
const NETWORK_LINKS: [(&str, &str); 4] =
    [(DEFERRED_EGRESS, "net-"), (FROM_NETWORK, "netin-"), (TO_HOST, "hostin-"), (FROM_HOST, "hostout-")];

/// Renames the link record `from` to `to`; false when there is none.
fn move_link(from: &Path, to: &Path) -> Result<bool> {
    match fs::rename(from, to) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::PinDir { path: from.to_owned(), source }),
    }
}

fn object_digest(object: &[u8]) -> String {
    Sha256::digest(object).iter().map(|byte| format!("{byte:02x}")).collect()
}
