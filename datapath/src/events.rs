//! New-flow events from the kernel ring buffer.
use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use palisade_common::FlowEvent;

/// Single consumer of the node's event ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    /// A reader of any ring of `FlowEvent`s (the node's, or a benchmark's).
    pub fn new(ring: RingBuf<MapData>) -> Self {
        EventReader { ring }
    }

    /// Hands every available event to `on_event`, waiting up to `timeout` when there is none.
    /// Returns how many were read.
    pub fn read(&mut self, timeout: Duration, mut on_event: impl FnMut(FlowEvent)) -> usize {
        let mut read = self.drain(&mut on_event);
        if read == 0 {
            let mut poll = libc::pollfd { fd: self.ring.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd. A failed or interrupted poll just means "nothing yet".
            unsafe { libc::poll(&mut poll, 1, millis) };
            read = self.drain(&mut on_event);
        }
        read
    }

    /// Consumes events on a thread until the returned handle is dropped.
    pub fn spawn(mut self, mut on_event: impl FnMut(FlowEvent) + Send + 'static) -> EventThread {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::Builder::new()
            .name("palisade-events".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    self.read(Duration::from_millis(50), &mut on_event);
                }
            })
            .expect("spawn the event thread");
        EventThread { stop, handle: Some(handle) }
    }

    fn drain(&mut self, on_event: &mut impl FnMut(FlowEvent)) -> usize {
        let mut read = 0;
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<FlowEvent>() {
                // SAFETY: the program writes whole `FlowEvent`s; the ring gives no alignment.
                on_event(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
                read += 1;
            }
        }
        read
    }
}

/// Stops and joins the consumer thread when dropped.
pub struct EventThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for EventThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
