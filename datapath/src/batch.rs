//! BPF_MAP_UPDATE_BATCH, which aya 0.14 does not offer: many updates of one map in one
//! syscall. A promotion of every endpoint of a node writes two maps whole; one call each keeps
//! it in the milliseconds (with one syscall per element it took as long as the RCU grace period
//! an inner-map swap waits for).
use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::{Pod, maps::MapData};

/// Updates (inserts or replaces) `keys[i]` with `values[i]` in the map `map`, in one syscall.
/// On an error, the elements before the failing one may have been written.
pub fn update_batch<K: Pod, V: Pod>(map: &MapData, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return Ok(());
    }
    // The `batch` member of `union bpf_attr`.
    #[repr(C)]
    struct Batch {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let mut batch = Batch {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: `batch` points at `count` keys and values of the map's sizes (the kernel checks
    // the map's key and value sizes against its own; `K` and `V` are the map's types), valid
    // for the call.
    let rc =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, &mut batch as *mut Batch, size_of::<Batch>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if batch.count as usize != keys.len() {
        return Err(io::Error::other(format!("{} of {} elements written", batch.count, keys.len())));
    }
    Ok(())
}
