//! `palisade-agent --preflight` on this machine's kernel (root), in both attach modes: a node
//! namespace with one veth pair, Palisade's programs attached to one end from a pin directory of
//! its own. Seen from that pin directory they are the agent's own; seen from another, they are a
//! foreign datapath's programs on a pod interface, which fails the node, naming the interface and
//! the program.
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

use palisade_agent::preflight::{self, Status};
use palisade_datapath::{AttachMode, Datapath};

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?}");
}

/// Removes the namespace and the pin directories, whatever the test's outcome.
struct Cleanup(&'static str, Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).stderr(std::process::Stdio::null()).status();
        for dir in &self.1 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn in_netns<T: Send + 'static>(ns: &'static str, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let ns = File::open(format!("/run/netns/{ns}")).expect("open the netns");
        // SAFETY: a valid namespace file descriptor; affects only this thread, which ends here.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

#[test]
fn a_foreign_tcx_program_on_a_veth_fails_the_preflight() {
    foreign_programs_fail_the_preflight(AttachMode::Tcx, "pfl-tcx");
}

#[test]
fn a_foreign_legacy_tc_filter_on_a_veth_fails_the_preflight() {
    foreign_programs_fail_the_preflight(AttachMode::Tc, "pfl-tc");
}

/// Palisade's programs, attached in `mode` in namespace `ns`: the agent's own seen from its pin
/// directory, a foreign datapath's from another.
fn foreign_programs_fail_the_preflight(mode: AttachMode, ns: &'static str) {
    assert_eq!(unsafe { libc::geteuid() }, 0, "needs root (netns, veths, eBPF)");
    let ours = PathBuf::from(format!("/sys/fs/bpf/{ns}-{}", std::process::id()));
    let other = PathBuf::from(format!("/sys/fs/bpf/{ns}-other-{}", std::process::id()));
    let _ = Command::new("ip").args(["netns", "del", ns]).stderr(std::process::Stdio::null()).status();
    let _cleanup = Cleanup(ns, vec![ours.clone(), other.clone()]);
    ip(&["netns", "add", ns]);
    ip(&["-n", ns, "link", "add", "pfl0", "type", "veth", "peer", "name", "pfl1"]);
    ip(&["-n", ns, "link", "set", "pfl0", "up"]);
    ip(&["-n", ns, "link", "set", "pfl1", "up"]);

    let (mine, foreign) = in_netns(ns, {
        let (ours, other) = (ours.clone(), other.clone());
        move || {
            let mut datapath = Datapath::open_with(&ours, Some(mode)).expect("load the datapath");
            datapath.attach(1, "pfl0", Ipv4Addr::new(10, 200, 99, 2)).expect("attach");
            let mine = preflight::run(&ours);
            let foreign = preflight::run(&other);
            datapath.destroy().expect("detach");
            (mine, foreign)
        }
    });
    for check in mine.iter().chain(&foreign) {
        println!("{check}");
    }
    assert!(preflight::passed(&mine), "{mine:?}");
    assert_eq!(mine[2].message, "veths: 2 pod interfaces are veths");
    assert_eq!(mine[3].status, Status::Ok, "{}", mine[3]);
    assert!(!mine[3].message.contains("(0 of Palisade's)"), "{}", mine[3]);

    assert!(!preflight::passed(&foreign));
    assert_eq!(foreign[3].status, Status::Fail);
    let hook = if mode == AttachMode::Tcx { "tcx" } else { "tc" };
    for program in ["ingress: from_endpoint", "egress: deferred_egress", "egress: to_endpoint"] {
        assert!(foreign[3].message.contains(&format!("pfl0 {hook} {program}")), "{}", foreign[3]);
    }
    assert!(!foreign[3].message.contains("pfl1"), "{}", foreign[3]);
}
