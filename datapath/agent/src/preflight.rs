//! `palisade-agent --preflight`: can this node run the agent?
//!
//! Four checks, each a pure function over what the system says (the kernel release, the text of
//! `/proc/self/mounts`, the node's links and their kinds, the tc programs attached to the veths),
//! so tests feed them fake inputs; [`run`] is the thin adapter that reads the real system. Each
//! check yields one [`Check`], printed as one line (`ok   …`, `WARN …`, `FAIL …`); any failure
//! makes the preflight fail.
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// The oldest kernel the datapath attaches to, with legacy tc filters.
pub const MIN_KERNEL: (u32, u32) = (5, 10);
/// TCX (the multi-program tc hooks the datapath attaches to by default) arrived in Linux 6.6.
pub const TCX_KERNEL: (u32, u32) = (6, 6);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One check's outcome: one line of the preflight's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub status: Status,
    pub message: String,
}

impl Check {
    fn new(status: Status, message: impl Into<String>) -> Self {
        Check { status, message: message.into() }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        write!(f, "{tag} {}", self.message)
    }
}

/// Whether every check passed (warnings pass).
pub fn passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

/// `6.18.44-fc-v1300` → (6, 18, 44); `5.10.0-28-amd64` → (5, 10, 0); `6.6` → (6, 6, 0).
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32, u32)> {
    let mut parts = release.trim().splitn(3, '.');
    let number = |part: Option<&str>| -> Option<u32> {
        let digits: String = part?.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let major = number(parts.next())?;
    let minor = number(parts.next())?;
    let patch = number(parts.next()).unwrap_or(0);
    Some((major, minor, patch))
}

/// Check 1: the kernel (its release, as `uname -r` prints it) is recent enough, and how the
/// agent will attach on it: TCX from 6.6, legacy tc filters before.
pub fn kernel(release: &str) -> Check {
    let release = release.trim();
    let ((major, minor), (tcx_major, tcx_minor)) = (MIN_KERNEL, TCX_KERNEL);
    match parse_kernel_release(release) {
        None => Check::new(Status::Fail, format!("kernel: cannot read the version of release {release:?}")),
        Some((a, b, _)) if (a, b) >= TCX_KERNEL => {
            Check::new(Status::Ok, format!("kernel {release}: attaching with TCX"))
        }
        Some((a, b, _)) if (a, b) >= MIN_KERNEL => Check::new(
            Status::Ok,
            format!("kernel {release}: no TCX before {tcx_major}.{tcx_minor}, attaching with legacy tc filters"),
        ),
        Some(_) => Check::new(
            Status::Fail,
            format!("kernel {release} is too old (needs >= {major}.{minor}); upgrade the node's kernel"),
        ),
    }
}

/// A mount point of `/proc/self/mounts`, whose spaces, tabs, newlines and backslashes are octal
/// escapes (`\040`).
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Check 2: the pin directory lives on a bpf filesystem. `mounts` is the text of
/// `/proc/self/mounts`; the mount holding `pin_dir` is the last one whose mount point is its
/// longest ancestor (a later mount on the same point hides the earlier ones).
pub fn bpffs(mounts: &str, pin_dir: &Path) -> Check {
    let parent = pin_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(pin_dir);
    let mut holder: Option<(PathBuf, String)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_source), Some(point), Some(fstype)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let point = PathBuf::from(unescape_mount(point));
        if !pin_dir.starts_with(&point) {
            continue;
        }
        let longer = holder.as_ref().is_none_or(|(p, _)| point.components().count() >= p.components().count());
        if longer {
            holder = Some((point, fstype.to_string()));
        }
    }
    let fix = format!("mount -t bpf bpf {}", parent.display());
    match holder {
        Some((point, fstype)) if fstype == "bpf" => {
            Check::new(Status::Ok, format!("bpffs mounted at {} (pin dir {})", point.display(), pin_dir.display()))
        }
        Some((point, fstype)) => Check::new(
            Status::Fail,
            format!(
                "bpffs: {} is not a bpf filesystem (it is on {fstype} mounted at {}); {fix}",
                parent.display(),
                point.display()
            ),
        ),
        None => Check::new(
            Status::Fail,
            format!("bpffs: {} is not a bpf filesystem (no mount holds it); {fix}", parent.display()),
        ),
    }
}

/// A link of the node's network namespace and its kind (`IFLA_INFO_KIND`: `veth`, `bridge`,
/// `vxlan`…; none for physical devices and the loopback).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
}

/// The veths among `links`.
pub fn veth_links(links: &[Link]) -> Vec<&Link> {
    links.iter().filter(|l| l.kind.as_deref() == Some("veth")).collect()
}

/// Check 3: pods are wired with veths (the datapath attaches to their host side). None is a
/// warning: a node with no pod yet, or a CNI that does not use veths (then nothing is enforced).
pub fn veths(links: &[Link]) -> Check {
    let names = veth_links(links);
    if names.is_empty() {
        let others: BTreeSet<&str> = links.iter().filter_map(|l| l.kind.as_deref()).collect();
        let others = if others.is_empty() {
            "no virtual links".to_string()
        } else {
            format!("link kinds: {}", others.into_iter().collect::<Vec<_>>().join(", "))
        };
        return Check::new(
            Status::Warn,
            format!("veths: none on this node ({others}); Palisade attaches to pods' host-side veths only"),
        );
    }
    Check::new(Status::Ok, format!("veths: {} pod interfaces are veths", names.len()))
}

/// A program attached at a veth's tc hooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub interface: String,
    /// `tcx ingress`, `tcx egress`, or the legacy `tc ingress`, `tc egress` (a cls_bpf filter
    /// on the clsact qdisc).
    pub hook: &'static str,
    pub id: u32,
    pub name: String,
}

/// Check 4: no program but Palisade's is attached at the veths' tc hooks (tcx or legacy tc), where it could
/// redirect pod traffic before Palisade's programs see it (Cilium's `cil_from_container`, Calico
/// eBPF's `calico_from_workload_ep`…). `ours` are the ids of the programs pinned in the pin
/// directory; `errors` are the hooks that could not be queried.
pub fn foreign_programs(attached: &[Attached], ours: &BTreeSet<u32>, errors: &[String]) -> Check {
    let foreign: Vec<String> = attached
        .iter()
        .filter(|a| !ours.contains(&a.id))
        .map(|a| {
            let name = if a.name.is_empty() { "(unnamed)" } else { &a.name };
            format!("{} {}: {name} (id {})", a.interface, a.hook, a.id)
        })
        .collect();
    if !foreign.is_empty() {
        return Check::new(
            Status::Fail,
            format!(
                "tc programs: another datapath is attached to pod interfaces, {}; Palisade cannot run beside an eBPF CNI (Cilium, Calico eBPF)",
                foreign.join(", ")
            ),
        );
    }
    if !errors.is_empty() {
        return Check::new(Status::Fail, format!("tc programs: cannot query tc hooks: {}", errors.join(", ")));
    }
    let own = attached.len();
    Check::new(Status::Ok, format!("tc programs: no foreign program on the veths' tc hooks ({own} of Palisade's)"))
}

/// Runs every check on this node, for the datapath pinned at `pin_dir`.
pub fn run(pin_dir: &Path) -> Vec<Check> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_else(|_| uname_release());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut checks = vec![kernel(&release), bpffs(&mounts, pin_dir)];
    match links() {
        Ok(links) => {
            checks.push(veths(&links));
            let (attached, errors) = attached_programs(&veth_links(&links));
            checks.push(foreign_programs(&attached, &pinned_programs(pin_dir), &errors));
        }
        Err(e) => checks.push(Check::new(Status::Fail, format!("veths: cannot list the node's links: {e}"))),
    }
    checks
}

fn uname_release() -> String {
    // SAFETY: uname fills the zeroed struct; its fields are NUL-terminated.
    unsafe {
        let mut name: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut name) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(name.release.as_ptr()).to_string_lossy().into_owned()
    }
}

/// The links of the calling thread's network namespace (`RTM_GETLINK` dump, as `ip -d link`).
pub fn links() -> std::io::Result<Vec<Link>> {
    let messages = dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => Some(link_of(link)),
            _ => None,
        })
        .collect())
}

/// Sends one rtnetlink dump request and collects the kernel's answers, up to `NLMSG_DONE`.
fn dump(request: RouteNetlinkMessage) -> std::io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::from(request));
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    socket.send(&buffer, 0)?;
    let mut answers = Vec::new();
    loop {
        let (reply, _) = socket.recv_from_full()?;
        if reply.is_empty() {
            return Ok(answers);
        }
        let mut offset = 0;
        while offset < reply.len() {
            let message =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[offset..]).map_err(std::io::Error::other)?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::Error(error) if error.code.is_some() => return Err(error.to_io()),
                NetlinkPayload::InnerMessage(answer) => answers.push(answer),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += (length + 3) & !3;
        }
    }
}

fn link_of(message: &LinkMessage) -> Link {
    let mut link = Link { index: message.header.index, name: String::new(), kind: None };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(InfoKind::Veth) => Some("veth".to_string()),
                    LinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    link
}

/// The programs attached at the tcx and legacy tc ingress and egress of `interfaces`, and the
/// hooks that could not be queried.
fn attached_programs(interfaces: &[&Link]) -> (Vec<Attached>, Vec<String>) {
    use aya::programs::{SchedClassifier, TcAttachType};
    let mut attached = Vec::new();
    let mut errors = Vec::new();
    for link in interfaces {
        let interface = &link.name;
        for (hook, kind) in [("tcx ingress", TcAttachType::Ingress), ("tcx egress", TcAttachType::Egress)] {
            match SchedClassifier::query_tcx(interface, kind) {
                Ok((_, programs)) => attached.extend(programs.iter().map(|p| Attached {
                    interface: interface.clone(),
                    hook,
                    id: p.id(),
                    name: p.name_as_str().unwrap_or_default().to_string(),
                })),
                Err(e) => errors.push(format!("{interface} {hook}: {e}")),
            }
        }
        for (hook, minor) in [("tc ingress", TcHandle::MIN_INGRESS), ("tc egress", TcHandle::MIN_EGRESS)] {
            match tc_filters(link.index, minor) {
                Ok(programs) => attached.extend(programs.into_iter().map(|(id, name)| Attached {
                    interface: interface.clone(),
                    hook,
                    id,
                    name,
                })),
                Err(e) => errors.push(format!("{interface} {hook}: {e}")),
            }
        }
    }
    (attached, errors)
}

/// The cls_bpf programs (id, name) of the clsact qdisc's `minor` hook of interface `index`
/// (`tc filter show dev IF ingress`); none without a clsact qdisc.
fn tc_filters(index: u32, minor: u16) -> std::io::Result<Vec<(u32, String)>> {
    let mut request = TcMessage::default();
    request.header.index = index as i32;
    request.header.parent = TcHandle { major: 0xffff, minor };
    let answers = match dump(RouteNetlinkMessage::GetTrafficFilter(request)) {
        Ok(answers) => answers,
        // No clsact qdisc on the interface.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::ENOENT) => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut programs = Vec::new();
    for answer in answers {
        let RouteNetlinkMessage::NewTrafficFilter(filter) = answer else { continue };
        let options = filter.attributes.iter().filter_map(|a| match a {
            TcAttribute::Options(options) => Some(options),
            _ => None,
        });
        let (mut id, mut name) = (None, String::new());
        for option in options.flatten() {
            match option {
                TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = Some(*i),
                TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = n.clone(),
                _ => {}
            }
        }
        if let Some(id) = id {
            programs.push((id, name));
        }
    }
    Ok(programs)
}

/// The ids of the programs pinned in `<pin_dir>/programs` (none before the agent's first start).
fn pinned_programs(pin_dir: &Path) -> BTreeSet<u32> {
    let Ok(entries) = std::fs::read_dir(pin_dir.join("programs")) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| aya::programs::ProgramInfo::from_pin(e.path()).ok())
        .map(|info| info.id())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse_with_their_suffixes() {
        assert_eq!(parse_kernel_release("6.18.44-fc-v1300"), Some((6, 18, 44)));
        assert_eq!(parse_kernel_release("5.10.0-28-amd64\n"), Some((5, 10, 0)));
        assert_eq!(parse_kernel_release("6.6"), Some((6, 6, 0)));
        assert_eq!(parse_kernel_release("6.8.0-rc3+"), Some((6, 8, 0)));
        assert_eq!(parse_kernel_release("linux"), None);
        assert_eq!(parse_kernel_release(""), None);
    }

    #[test]
    fn kernels_from_5_10_pass_with_tcx_from_6_6_and_older_fail() {
        let ok = kernel("6.18.44-fc-v1300\n");
        assert_eq!(ok.to_string(), "ok   kernel 6.18.44-fc-v1300: attaching with TCX");
        assert!(kernel("6.6.0").to_string().ends_with("TCX"));
        assert!(kernel("7.0.1").to_string().ends_with("TCX"));
        for legacy in ["5.10.0-28-amd64", "6.5.13", "6.1.0-13-cloud-amd64"] {
            let check = kernel(legacy);
            assert_eq!(check.status, Status::Ok, "{check}");
            assert!(check.to_string().ends_with("no TCX before 6.6, attaching with legacy tc filters"), "{check}");
        }
        let old = kernel("5.4.0-150-generic");
        assert_eq!(old.status, Status::Fail);
        assert!(old.to_string().starts_with("FAIL kernel 5.4.0-150-generic is too old (needs >= 5.10)"), "{old}");
        assert_eq!(kernel("garbage").status, Status::Fail);
    }

    const MOUNTS: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
/dev/vda / ext4 rw,relatime 0 0
bpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0
";

    #[test]
    fn bpffs_at_the_pin_dirs_parent_passes() {
        let check = bpffs(MOUNTS, Path::new("/sys/fs/bpf/palisade"));
        assert_eq!(check.status, Status::Ok, "{check}");
        assert_eq!(check.to_string(), "ok   bpffs mounted at /sys/fs/bpf (pin dir /sys/fs/bpf/palisade)");
    }

    #[test]
    fn a_missing_bpffs_fails_with_the_mount_command() {
        let mounts = "sysfs /sys sysfs rw 0 0\n/dev/vda / ext4 rw 0 0\n";
        let check = bpffs(mounts, Path::new("/sys/fs/bpf/palisade"));
        assert_eq!(check.status, Status::Fail);
        assert_eq!(
            check.to_string(),
            "FAIL bpffs: /sys/fs/bpf is not a bpf filesystem (it is on sysfs mounted at /sys); mount -t bpf bpf /sys/fs/bpf"
        );
        let check = bpffs("", Path::new("/sys/fs/bpf/palisade"));
        assert_eq!(check.status, Status::Fail);
        assert!(check.message.ends_with("mount -t bpf bpf /sys/fs/bpf"), "{check}");
    }

    #[test]
    fn bpffs_follows_the_pin_dir_option_and_the_last_mount_wins() {
        let mounts = "bpf /run/my\\040bpf bpf rw 0 0\n";
        assert_eq!(bpffs(mounts, Path::new("/run/my bpf/palisade")).status, Status::Ok);
        assert_eq!(bpffs(MOUNTS, Path::new("/run/bpf/palisade")).status, Status::Fail);
        // A tmpfs mounted over the bpffs hides it.
        let hidden = format!("{MOUNTS}tmpfs /sys/fs/bpf tmpfs rw 0 0\n");
        assert_eq!(bpffs(&hidden, Path::new("/sys/fs/bpf/palisade")).status, Status::Fail);
        // A mount point that only shares a prefix of the name is not an ancestor.
        let lookalike = "bpf /sys/fs/bp bpf rw 0 0\nsysfs /sys sysfs rw 0 0\n";
        assert_eq!(bpffs(lookalike, Path::new("/sys/fs/bpf/palisade")).status, Status::Fail);
    }

    fn link(name: &str, kind: Option<&str>) -> Link {
        Link { index: 0, name: name.into(), kind: kind.map(Into::into) }
    }

    #[test]
    fn veths_are_counted_and_none_is_a_warning() {
        let links =
            [link("lo", None), link("eth0", None), link("cni0", Some("bridge")), link("veth1a2b", Some("veth"))];
        let mut links = links.to_vec();
        links.push(link("vethc3d4", Some("veth")));
        let check = veths(&links);
        assert_eq!(check.to_string(), "ok   veths: 2 pod interfaces are veths");
        let names: Vec<&str> = veth_links(&links).iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["veth1a2b", "vethc3d4"]);
        let none = veths(&[link("lo", None), link("eth0", None), link("flannel.1", Some("vxlan"))]);
        assert_eq!(none.status, Status::Warn);
        assert!(none.to_string().starts_with("WARN veths: none on this node (link kinds: vxlan)"), "{none}");
        assert!(passed(&[none]));
    }

    fn attached(interface: &str, hook: &'static str, id: u32, name: &str) -> Attached {
        Attached { interface: interface.into(), hook, id, name: name.into() }
    }

    #[test]
    fn only_palisades_programs_may_sit_on_the_veths() {
        let ours = BTreeSet::from([10, 11, 12]);
        let mine =
            [attached("veth1", "tcx ingress", 10, "from_endpoint"), attached("veth1", "tcx egress", 11, "to_endpoint")];
        let check = foreign_programs(&mine, &ours, &[]);
        assert_eq!(check.status, Status::Ok, "{check}");
        assert_eq!(foreign_programs(&[], &BTreeSet::new(), &[]).status, Status::Ok);

        let mut cilium = mine.to_vec();
        cilium.push(attached("lxc12ab", "tcx ingress", 99, "cil_from_container"));
        let check = foreign_programs(&cilium, &ours, &[]);
        assert_eq!(check.status, Status::Fail);
        assert!(check.to_string().contains("lxc12ab tcx ingress: cil_from_container (id 99)"), "{check}");
        assert!(!passed(&[kernel("6.18.0"), check]));

        let calico = [attached("cali0ef", "tc ingress", 7, "calico_from_wor")];
        let check = foreign_programs(&calico, &BTreeSet::new(), &[]);
        assert!(check.to_string().starts_with("FAIL tc programs:"), "{check}");
        assert!(check.message.contains("cali0ef tc ingress: calico_from_wor (id 7)"), "{check}");

        let check = foreign_programs(&[], &ours, &["veth1 tcx ingress: EPERM".into()]);
        assert_eq!(check.status, Status::Fail);
    }

    /// On this machine (root, kernel >= 6.6, bpffs at /sys/fs/bpf): the kernel and bpffs checks
    /// pass, and every check yields a line.
    #[test]
    fn this_machine_passes_the_kernel_and_bpffs_checks() {
        let checks = run(Path::new(palisade_datapath::DEFAULT_PIN_DIR));
        for check in &checks {
            println!("{check}");
        }
        assert_eq!(checks.len(), 4, "{checks:?}");
        assert_eq!(checks[0].status, Status::Ok, "{}", checks[0]);
        assert_eq!(checks[1].status, Status::Ok, "{}", checks[1]);
        assert_ne!(checks[2].status, Status::Fail, "{}", checks[2]);
    }
}
