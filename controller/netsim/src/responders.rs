//! Echo servers on every declared container port of every pod, bound inside the pod's namespace
//! (and on the host-network pods' ports in the node namespace: the node's daemons):
//! TCP connections and UDP datagrams are echoed, except [`WHO`], which is answered with
//! `palisade-who NAMESPACE/POD\n` so that a client of a Service learns which backend it reached;
//! ICMP echo is answered by the kernel. SCTP ports are not served. A pod's HTTP ports
//! ([`crate::http`]), Kafka ports ([`crate::kafka`]) and a DNS pod's port 53 ([`crate::dns`]) are
//! served on a small tokio runtime
//! instead, declared as container ports or not. A dual-stack pod's ports are bound on both
//! families (one IPv6 socket that also takes IPv4).
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use palisade_policy::cluster::ContainerPort;
use palisade_policy::model::Protocol;
use socket2::{Domain, Socket, Type};

use crate::dns::{self, DNS_PORT, DnsZone};
use crate::error::{Error, Result};
use crate::net::{LocalNetwork, PodNet, in_netns};
use crate::probe::Port;
use crate::{http, kafka};

/// The question a probe asks a responder: who are you? See [`answer`].
pub const WHO: &[u8] = b"palisade-who\n";

/// An idle TCP connection is closed after this, so that its thread ends.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The running responders; dropping them closes the listeners and joins their threads.
pub struct Responders {
    stopping: Arc<AtomicBool>,
    /// Second handles on the sockets the threads block on, to wake them with a shutdown.
    sockets: Vec<Socket>,
    threads: Vec<JoinHandle<()>>,
    /// Runs the HTTP and DNS servers; dropping it stops them and closes their sockets.
    runtime: Option<tokio::runtime::Runtime>,
    served: Vec<(String, Port)>,
}

/// What a port answers.
enum Serve {
    Echo,
    Http,
    Kafka,
    Dns(Arc<DnsZone>),
}

impl Responders {
    /// Binds every declared TCP and UDP port, HTTP port and DNS port in every pod's namespace,
    /// then serves them. Fails, with nothing left running, if any port cannot be bound.
    pub fn start(network: &LocalNetwork) -> Result<Responders> {
        let mut responders = Responders {
            stopping: Arc::new(AtomicBool::new(false)),
            sockets: Vec::new(),
            threads: Vec::new(),
            runtime: None,
            served: Vec::new(),
        };
        for pod in network.pods() {
            responders.serve_in(&pod.netns, &pod.key, ports_of(pod), pod.ipv6.is_some())?;
        }
        let node = network.node();
        let node_ports = echoed(&node.ports, Vec::new());
        responders.serve_in(network.node_netns(), &format!("node {}", node.name), node_ports, node.ipv6.is_some())?;
        Ok(responders)
    }

    /// Binds `ports` in namespace `netns` (on both families with `dual_stack`) and serves them
    /// as `key`, a pod's or the node's.
    fn serve_in(&mut self, netns: &str, key: &str, ports: Vec<(Port, Serve)>, dual_stack: bool) -> Result<()> {
        let bind_all = move || {
            ports.into_iter().map(|(port, serve)| Ok((port, bind(port, dual_stack)?, serve))).collect::<io::Result<_>>()
        };
        let bound: Vec<(Port, Socket, Serve)> = in_netns(netns, bind_all)
            .map_err(|e| Error::io(format!("{key}: enter its network namespace"), e))?
            .map_err(|e| Error::io(key.to_owned(), e))?;
        for (port, socket, serve) in bound {
            let name = format!("{key} {port}");
            match serve {
                Serve::Echo => self.echo(port, socket, name, key.to_owned())?,
                serve => self.spawn(port, socket, serve, name, key)?,
            }
            self.served.push((key.to_owned(), port));
        }
        Ok(())
    }

    /// Serves an echo port on its own thread.
    fn echo(&mut self, port: Port, socket: Socket, name: String, key: String) -> Result<()> {
        self.sockets.push(socket.try_clone().map_err(|e| Error::io("duplicate a responder socket", e))?);
        let stopping = self.stopping.clone();
        let thread = thread::Builder::new().name(name.clone()).spawn(move || match port {
            Port::Udp(_) => serve_udp(socket.into(), &stopping, &name, &key),
            _ => serve_tcp(socket, &stopping, &name, key),
        });
        self.threads.push(thread.map_err(|e| Error::io("start a responder thread", e))?);
        Ok(())
    }

    /// Serves an HTTP, Kafka or DNS port on the runtime, started with the first.
    fn spawn(&mut self, port: Port, socket: Socket, serve: Serve, name: String, key: &str) -> Result<()> {
        if self.runtime.is_none() {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("responders")
                .enable_all()
                .build()
                .map_err(|e| Error::io("start the responders' runtime", e))?;
            self.runtime = Some(runtime);
        }
        let runtime = self.runtime.as_ref().expect("just started");
        let _entered = runtime.enter();
        let registered = |e| Error::io(format!("responder {name}: register its socket"), e);
        socket.set_nonblocking(true).map_err(registered)?;
        match (port, serve) {
            (Port::Udp(_), Serve::Dns(zone)) => {
                let socket = tokio::net::UdpSocket::from_std(socket.into()).map_err(registered)?;
                runtime.spawn(dns::serve_udp(socket, zone, name));
            }
            (_, serve) => {
                let listener = tokio::net::TcpListener::from_std(socket.into()).map_err(registered)?;
                match serve {
                    Serve::Dns(zone) => runtime.spawn(dns::serve_tcp(listener, zone)),
                    Serve::Kafka => runtime.spawn(kafka::serve(listener)),
                    _ => runtime.spawn(http::serve(listener, key.into())),
                };
            }
        }
        Ok(())
    }

    /// The `(pod, port)` pairs being served.
    pub fn served(&self) -> &[(String, Port)] {
        &self.served
    }
}

impl Drop for Responders {
    fn drop(&mut self) {
        // Waits for its worker, which drops every task and with them their sockets.
        drop(self.runtime.take());
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

/// What each port of `pod` answers: its HTTP and Kafka ports, port 53 of a DNS pod, and an echo
/// on every other declared TCP and UDP port.
fn ports_of(pod: &PodNet) -> Vec<(Port, Serve)> {
    let mut ports: Vec<(Port, Serve)> = pod.http_ports.iter().map(|&p| (Port::Tcp(p), Serve::Http)).collect();
    ports.extend(pod.kafka_ports.iter().map(|&p| (Port::Tcp(p), Serve::Kafka)));
    if let Some(zone) = &pod.dns {
        let zone = Arc::new(zone.clone());
        ports.extend([Port::Udp(DNS_PORT), Port::Tcp(DNS_PORT)].map(|p| (p, Serve::Dns(zone.clone()))));
    }
    echoed(&pod.ports, ports)
}

/// `ports`, and an echo on every declared TCP and UDP port they do not serve yet.
fn echoed(declared: &[ContainerPort], mut ports: Vec<(Port, Serve)>) -> Vec<(Port, Serve)> {
    for declared in declared {
        let port = match declared.protocol {
            Protocol::TCP => Port::Tcp(declared.port),
            Protocol::UDP => Port::Udp(declared.port),
            _ => continue,
        };
        if !ports.iter().any(|(p, _)| *p == port) {
            ports.push((port, Serve::Echo));
        }
    }
    ports
}

/// Binds one port, on both families with `dual_stack`; the error says which and what failed.
fn bind(port: Port, dual_stack: bool) -> io::Result<Socket> {
    let (kind, number) = match port {
        Port::Tcp(number) => (Type::STREAM, number),
        Port::Udp(number) => (Type::DGRAM, number),
        Port::Icmp => unreachable!("ICMP echo is the kernel's"),
    };
    let step = |what: String| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let (domain, any) = if dual_stack {
        (Domain::IPV6, SocketAddr::from((Ipv6Addr::UNSPECIFIED, number)))
    } else {
        (Domain::IPV4, SocketAddr::from((Ipv4Addr::UNSPECIFIED, number)))
    };
    let socket = Socket::new(domain, kind, None).map_err(step(format!("{port}: socket")))?;
    if dual_stack {
        socket.set_only_v6(false).map_err(step(format!("{port}: IPV6_V6ONLY")))?;
    }
    socket.set_reuse_address(true).map_err(step(format!("{port}: SO_REUSEADDR")))?;
    socket.bind(&any.into()).map_err(step(format!("bind {port}")))?;
    if kind == Type::STREAM {
        socket.listen(128).map_err(step(format!("listen on {port}")))?;
    }
    Ok(socket)
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
