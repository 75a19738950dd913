//! Echo servers on every declared container port of every pod, bound inside the pod's namespace:
//! TCP connections and UDP datagrams are echoed, except [`WHO`], which is answered with
//! `palisade-who NAMESPACE/POD\n` so that a client of a Service learns which backend it reached;
//! ICMP echo is answered by the kernel. SCTP ports are not served.
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use palisade_policy::model::Protocol;
use socket2::{Domain, Socket, Type};

use crate::error::{Error, Result};
use crate::net::{LocalNetwork, in_netns};
use crate::probe::Port;

/// The question a probe asks a responder: who are you? See [`answer`].
pub const WHO: &[u8] = b"palisade-who\n";

/// An idle TCP connection is closed after this, so that its thread ends.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The running responders; dropping them closes the listeners and joins their threads.
pub struct Responders {
    stopping: Arc<AtomicBool>,
    /// Second handles on the sockets the threads block on, to wake them with a shutdown.
    sockets: Vec<Socket>,
    threads: Vec<JoinHandle<()>>,
    served: Vec<(String, Port)>,
}

impl Responders {
    /// Binds every declared TCP and UDP port in every pod's namespace, then serves them on
    /// threads. Fails, with nothing left running, if any port cannot be bound.
    pub fn start(network: &LocalNetwork) -> Result<Responders> {
        let mut responders = Responders {
            stopping: Arc::new(AtomicBool::new(false)),
            sockets: Vec::new(),
            threads: Vec::new(),
            served: Vec::new(),
        };
        for pod in network.pods() {
            let ports: Vec<(Port, Type, u16)> = pod
                .ports
                .iter()
                .filter_map(|p| match p.protocol {
                    Protocol::TCP => Some((Port::Tcp(p.port), Type::STREAM, p.port)),
                    Protocol::UDP => Some((Port::Udp(p.port), Type::DGRAM, p.port)),
                    _ => None,
                })
                .collect();
            let bound = in_netns(&pod.netns, move || ports.into_iter().map(bind).collect::<io::Result<Vec<_>>>())
                .map_err(|e| Error::io(format!("pod {}: enter its network namespace", pod.key), e))?
                .map_err(|e| Error::io(format!("pod {}", pod.key), e))?;
            for (port, socket) in bound {
                responders.sockets.push(socket.try_clone().map_err(|e| Error::io("duplicate a responder socket", e))?);
                let stopping = responders.stopping.clone();
                let (name, key) = (format!("{} {port}", pod.key), pod.key.clone());
                let thread = thread::Builder::new().name(name.clone()).spawn(move || match port {
                    Port::Udp(_) => serve_udp(socket.into(), &stopping, &name, &key),
                    _ => serve_tcp(socket, &stopping, &name, key),
                });
                responders.threads.push(thread.map_err(|e| Error::io("start a responder thread", e))?);
                responders.served.push((pod.key.clone(), port));
            }
        }
        Ok(responders)
    }

    /// The `(pod, port)` pairs being served.
    pub fn served(&self) -> &[(String, Port)] {
        &self.served
    }
}

impl Drop for Responders {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        for socket in &self.sockets {
            // Wakes a blocked accept (EINVAL) or recv (0 bytes); UDP also reports ENOTCONN.
            let _ = socket.shutdown(Shutdown::Read);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Binds one port; the error says which and what failed.
fn bind((port, kind, number): (Port, Type, u16)) -> io::Result<(Port, Socket)> {
    let step = |what: String| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let socket = Socket::new(Domain::IPV4, kind, None).map_err(step(format!("{port}: socket")))?;
    socket.set_reuse_address(true).map_err(step(format!("{port}: SO_REUSEADDR")))?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, number)).into()).map_err(step(format!("bind {port}")))?;
    if kind == Type::STREAM {
        socket.listen(128).map_err(step(format!("listen on {port}")))?;
    }
    Ok((port, socket))
}

/// The reply to `input` from pod `key`: who it is to [`WHO`], else the input itself.
fn answer<'a>(input: &'a [u8], key: &str) -> std::borrow::Cow<'a, [u8]> {
    if input == WHO { format!("palisade-who {key}\n").into_bytes().into() } else { input.into() }
}

/// Reads the pod a responder names in its answer to [`WHO`].
pub fn read_who(reply: &[u8]) -> Option<String> {
    let line = std::str::from_utf8(reply).ok()?.strip_prefix("palisade-who ")?.strip_suffix('\n')?;
    Some(line.to_owned())
}

fn serve_tcp(listener: Socket, stopping: &AtomicBool, name: &str, key: String) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let stream = TcpStream::from(stream);
                // Detached: each ends when its client closes or goes idle.
                let key = key.clone();
                let _ = thread::Builder::new().name(format!("{name} echo")).spawn(move || echo(stream, &key));
            }
            Err(_) if stopping.load(Ordering::Relaxed) => return,
            // A client that gave up before the accept, or a signal.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::Interrupted) => {}
            Err(e) => {
                eprintln!("responder {name}: accept: {e}");
                return;
            }
        }
    }
}

fn echo(mut stream: TcpStream, key: &str) {
    if stream.set_read_timeout(Some(IDLE_TIMEOUT)).is_err() {
        return;
    }
    let mut buf = [0; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&answer(&buf[..n], key)).is_err() {
            break;
        }
    }
}

fn serve_udp(socket: UdpSocket, stopping: &AtomicBool, name: &str, key: &str) {
    let mut buf = [0; 65536];
    loop {
        let received = socket.recv_from(&mut buf);
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        match received {
            Ok((n, from)) => {
                let _ = socket.send_to(&answer(&buf[..n], key), from);
            }
            // ICMP errors for earlier replies surface here; the socket still works.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::Interrupted) => {}
            Err(e) => {
                eprintln!("responder {name}: receive: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_is_answered_with_the_pod_and_anything_else_echoed() {
        assert_eq!(&*answer(WHO, "shop/api-0"), b"palisade-who shop/api-0\n");
        assert_eq!(read_who(&answer(WHO, "shop/api-0")), Some("shop/api-0".to_owned()));
        assert_eq!(&*answer(b"palisade-probe", "shop/api-0"), b"palisade-probe");
        assert_eq!(read_who(b"palisade-probe"), None);
    }
}
