//! How the programs hook into an interface's tc ingress and egress: TCX links where the kernel
//! has them (6.6 and later), legacy tc filters (a clsact qdisc and cls_bpf in direct-action
//! mode) on kernels from 5.10. Either way the attachment is recorded at a path under the pin
//! directory, and that record is what makes it last: a TCX link is pinned there, a tc filter
//! outlives its process on its own and the record (an empty directory, as bpffs holds no files)
//! names the interface it was put on, so that a restarted agent finds it and can remove it.
use std::{fmt, fs, io, path::Path, str::FromStr};

use aya::{
    pin::PinError,
    programs::{
        Link, LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, LinkError},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    },
    util::KernelVersion,
};

use crate::interface_name;

/// The programs Palisade attaches.
pub(crate) const FROM_ENDPOINT: &str = "from_endpoint";
pub(crate) const TO_ENDPOINT: &str = "to_endpoint";
pub(crate) const DEFERRED_EGRESS: &str = "deferred_egress";
pub(crate) const FROM_NETWORK: &str = "from_network";
pub(crate) const TO_HOST: &str = "to_host";
pub(crate) const FROM_HOST: &str = "from_host";

/// The first kernel with TCX.
const TCX_KERNEL: KernelVersion = KernelVersion::new(6, 6, 0);

/// How programs are attached on this node; chosen once, when the datapath is first pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX links (kernel 6.6 and later), ordered by the kernel's multi-program API.
    Tcx,
    /// Legacy tc (kernels 5.10 to 6.5): cls_bpf filters on a clsact qdisc, ordered by priority.
    Tc,
}

impl AttachMode {
    /// TCX where the running kernel has it, else legacy tc.
    pub fn detect() -> AttachMode {
        match KernelVersion::current() {
            Ok(version) if version < TCX_KERNEL => AttachMode::Tc,
            _ => AttachMode::Tcx,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Tc => "tc",
        })
    }
}

impl FromStr for AttachMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "tcx" => Ok(AttachMode::Tcx),
            "tc" => Ok(AttachMode::Tc),
            other => Err(format!("unknown attach mode {other:?}: expected tcx (kernel >= 6.6) or tc (legacy tc)")),
        }
    }
}

/// Where a program runs on an interface: its hook; whether it goes before the others there
/// attached so far (the host endpoint's programs judge before anything else on their hook, and
/// a Service connection's source is judged before the backend's `to_endpoint` judges it, so
/// with TCX the host's go on last); and, for legacy tc, its filter's priority (lower runs
/// first), which with a handle of its own identifies the filter. Egress runs `from_host`,
/// `deferred_egress`, `to_endpoint`; ingress `to_host`, then `from_endpoint` or `from_network`.
struct Placement {
    hook: TcAttachType,
    first: bool,
    priority: u16,
    handle: TcHandle,
}

fn placement(program: &str) -> Placement {
    let (hook, first, priority, handle) = match program {
        FROM_HOST => (TcAttachType::Egress, true, 1, 1),
        DEFERRED_EGRESS => (TcAttachType::Egress, true, 2, 2),
        TO_ENDPOINT => (TcAttachType::Egress, false, 3, 3),
        TO_HOST => (TcAttachType::Ingress, true, 1, 4),
        FROM_ENDPOINT => (TcAttachType::Ingress, false, 2, 5),
        FROM_NETWORK => (TcAttachType::Ingress, false, 3, 6),
        other => unreachable!("{other} is not attached to interfaces"),
    };
    Placement { hook, first, priority, handle: TcHandle::new(0, handle) }
}

impl AttachMode {
    /// Attaches `program` (pinned as `name`) to `ifname` and records it at `record`.
    pub(crate) fn attach(
        self,
        program: &mut SchedClassifier,
        name: &str,
        ifname: &str,
        record: &Path,
    ) -> Result<(), HookError> {
        let placement = placement(name);
        let options = match self {
            AttachMode::Tcx => {
                TcAttachOptions::TcxOrder(if placement.first { LinkOrder::first() } else { LinkOrder::default() })
            }
            AttachMode::Tc => {
                match tc::qdisc_add_clsact(ifname) {
                    Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    result => result.map_err(ProgramError::from)?,
                }
                // No record says it is there, so a filter in its place is what an interrupted
                // attach left behind.
                remove_filter(ifname, &placement)?;
                TcAttachOptions::Netlink(NlOptions {
                    priority: placement.priority,
                    handle: placement.handle,
                    classid: None,
                })
            }
        };
        let link_id = program.attach_with_options(ifname, placement.hook, options)?;
        let link = program.take_link(link_id)?;
        match self {
            AttachMode::Tcx => {
                FdLink::try_from(link)?.pin(record)?;
            }
            AttachMode::Tc => {
                // Dropping the link would remove the filter; it holds no descriptor to leak.
                std::mem::forget(link);
                fs::create_dir_all(record.join(crate::ifindex(ifname)?.to_string()))?;
            }
        }
        Ok(())
    }

    /// Removes the attachment recorded at `record` of program `name`, if there is one: a TCX
    /// link goes with its pin, a tc filter is removed from its interface (if that is still
    /// there) before its record.
    pub(crate) fn detach(self, name: &str, record: &Path) -> Result<(), HookError> {
        match self {
            AttachMode::Tcx => match fs::remove_file(record) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            AttachMode::Tc => {
                let entries = match fs::read_dir(record) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    entries => entries?,
                };
                let placement = placement(name);
                for entry in entries {
                    let ifindex = entry?.file_name().to_string_lossy().parse::<u32>();
                    if let Some(ifname) = ifindex.ok().and_then(interface_name) {
                        remove_filter(&ifname, &placement)?;
                    }
                }
                Ok(fs::remove_dir_all(record)?)
            }
        }
    }
}

/// Removes the legacy tc filter at `placement` on `ifname`, if there is one.
fn remove_filter(ifname: &str, placement: &Placement) -> Result<(), HookError> {
    let filter = SchedClassifierLink::attached(ifname, placement.hook, placement.priority, placement.handle, None)?;
    match Link::detach(filter) {
        Err(ProgramError::NetlinkError(e)) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        result => Ok(result?),
    }
}

/// Why attaching or detaching failed; the caller names the program and where.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(transparent)]
    Io(#[from] io::Error),
}
