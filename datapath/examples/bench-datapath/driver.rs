//! The bench-only object (datapath/ebpf/src/bench.rs): `drive`, which runs a node program on a
//! new connection per run, and the synthetic event producer.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, ProgramArray},
    programs::{ProgramFd, SchedClassifier, TestRun, TestRunOptions},
};

/// Bench-only programs, never part of what a node loads.
static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade-bench-ebpf"));

/// The connections `drive` cycles through (bench.rs `FlowSpace`): `peers` source addresses
/// from the frame's, `ports` destination ports from the frame's.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FlowSpace {
    first_saddr: u32,
    peers: u32,
    first_dport: u32,
    ports: u32,
    saddr_offset: u32,
    dport_offset: u32,
}

// SAFETY: plain old data, as the kernel side reads it.
unsafe impl aya::Pod for FlowSpace {}

impl FlowSpace {
    /// Over IPv4 frames (`tcp_frame`).
    pub fn new(first_peer: Ipv4Addr, peers: u32, first_port: u16, ports: u32) -> FlowSpace {
        let (saddr_offset, dport_offset) = (14 + 12, 14 + 20 + 2);
        FlowSpace {
            first_saddr: first_peer.to_bits(),
            peers,
            first_dport: first_port as u32,
            ports,
            saddr_offset,
            dport_offset,
        }
    }

    /// Over IPv6 frames (`tcp_frame6`): the source addresses differ in their last 32 bits.
    pub fn new_v6(first_peer: Ipv6Addr, peers: u32, first_port: u16, ports: u32) -> FlowSpace {
        let (saddr_offset, dport_offset) = (14 + 8 + 12, 14 + 40 + 2);
        let first_saddr = first_peer.to_bits() as u32;
        FlowSpace { first_saddr, peers, first_dport: first_port as u32, ports, saddr_offset, dport_offset }
    }
}

pub struct Driver {
    object: Ebpf,
    /// The node program `drive` hands packets to.
    node_program: ProgramFd,
    /// `pass`: the node program absent.
    absent: ProgramFd,
}

/// What `drive` hands its packets to.
pub enum Target {
    NodeProgram,
    Absent,
}

impl Driver {
    /// Loads the bench object; `drive` will hand packets to the node's program pinned at
    /// `node_program` (`programs/<name>` of a datapath's pin directory).
    pub fn load(node_program: &Path) -> Driver {
        let mut object = Ebpf::load(BENCH_OBJECT).expect("load the bench object");
        for name in ["drive", "pass"] {
            let program: &mut SchedClassifier = object.program_mut(name).expect(name).try_into().unwrap();
            program.load().unwrap_or_else(|e| panic!("load {name}: {e}"));
        }
        let pinned = SchedClassifier::from_pin(node_program).expect("open the pinned program");
        let node_program = pinned.fd().unwrap().try_clone().unwrap();
        let pass: &SchedClassifier = object.program("pass").unwrap().try_into().unwrap();
        let absent = pass.fd().unwrap().try_clone().unwrap();
        Driver { object, node_program, absent }
    }

    pub fn drive_into(&mut self, target: Target) {
        let fd = match target {
            Target::NodeProgram => &self.node_program,
            Target::Absent => &self.absent,
        };
        let mut driven = ProgramArray::try_from(self.object.map_mut("DRIVEN").unwrap()).unwrap();
        driven.set(0, fd, 0).unwrap();
    }

    /// Runs `frame` `repeat` times through `drive` as if it crossed interface `ifindex` (in the
    /// caller's network namespace); returns the time per run.
    pub fn run(&mut self, space: FlowSpace, ifindex: u32, frame: &[u8], repeat: u32) -> Duration {
        let mut spaces = Array::try_from(self.object.map_mut("FLOW_SPACE").unwrap()).unwrap();
        spaces.set(0, space, 0).unwrap();
        self.test_run("drive", ifindex, frame, repeat)
    }

    /// [`Driver::run`] straight into `pass`: the harness with no program of the node's.
    pub fn run_absent(&self, ifindex: u32, frame: &[u8], repeat: u32) -> Duration {
        self.test_run("pass", ifindex, frame, repeat)
    }

    fn test_run(&self, program: &str, ifindex: u32, frame: &[u8], repeat: u32) -> Duration {
        // A `struct __sk_buff` prefix up to `ifindex` (offset 40), which picks the device.
        let mut context = [0u8; 44];
        context[40..].copy_from_slice(&ifindex.to_ne_bytes());
        let program: &SchedClassifier = self.object.program(program).unwrap().try_into().unwrap();
        let options = TestRunOptions { data_in: Some(frame), ctx_in: Some(&context), repeat, ..TestRunOptions::new() };
        program.test_run(options).expect("run a bench program").duration
    }

    pub fn object(&mut self) -> &mut Ebpf {
        &mut self.object
    }
}
