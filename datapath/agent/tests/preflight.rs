//! `palisade-agent --preflight` on this machine's kernel (root): a node namespace with one veth
//! pair, Palisade's programs attached to one end from a pin directory of its own. Seen from that
//! pin directory they are the agent's own; seen from another, they are a foreign datapath's
//! programs on a pod interface, which fails the node, naming the interface and the program.
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use palisade_agent::preflight::{self, Status};
use palisade_datapath::Datapath;

const NS: &str = "pfl-node";

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?}");
}

/// Removes the namespace and the pin directories, whatever the test's outcome.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NS]).stderr(std::process::Stdio::null()).status();
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let ns = File::open(format!("/run/netns/{NS}")).expect("open the netns");
        // SAFETY: a valid namespace file descriptor; affects only this thread, which ends here.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

#[test]
fn a_foreign_program_on_a_veth_fails_the_preflight() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (netns, veths, eBPF)");
        return;
    }
    let ours = PathBuf::from(format!("/sys/fs/bpf/palisade-preflight-{}", std::process::id()));
    let other = PathBuf::from(format!("/sys/fs/bpf/palisade-preflight-other-{}", std::process::id()));
    let _ = Command::new("ip").args(["netns", "del", NS]).stderr(std::process::Stdio::null()).status();
    let _cleanup = Cleanup(vec![ours.clone(), other.clone()]);
    ip(&["netns", "add", NS]);
    ip(&["-n", NS, "link", "add", "pfl0", "type", "veth", "peer", "name", "pfl1"]);
    ip(&["-n", NS, "link", "set", "pfl0", "up"]);
    ip(&["-n", NS, "link", "set", "pfl1", "up"]);

    let (mine, foreign) = in_netns({
        let (ours, other) = (ours.clone(), other.clone());
        move || {
            let mut datapath = Datapath::open(&ours).expect("load the datapath");
            datapath.attach(1, "pfl0", Ipv4Addr::new(10, 200, 99, 2)).expect("attach");
            let mine = preflight::run(&ours);
            let foreign = preflight::run(&other);
            drop(datapath);
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
    assert!(foreign[3].message.contains("pfl0 tcx ingress: from_endpoint"), "{}", foreign[3]);
    assert!(!foreign[3].message.contains("pfl1"), "{}", foreign[3]);
    assert!(Path::new(&ours).exists());
}
