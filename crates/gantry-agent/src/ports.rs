//! Bridge-mode port publishing: a task's `portMappings.hostPort` answers on the node (every
//! address, as Docker's bridge mode does) and is relayed to the task's address and container
//! port. A user-space relay (as docker-proxy does) rather than NAT rules: it also serves the
//! node's own loopback, needs no kernel state to clean up, and ends with the agent's handle.
//! hostPort 0 (or none) takes a free port from ECS's dynamic range 32768-60999.

use gantry_types::taskdef::PortMapping;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::AbortHandle;

pub const DYNAMIC_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;

/// One published port, as ECS reports it in a container's `networkBindings`.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub container_port: u16,
    pub host_port: u16,
    pub protocol: String,
}

impl Binding {
    pub fn to_json(&self) -> Value {
        json!({"bindIP": "0.0.0.0", "containerPort": self.container_port, "hostPort": self.host_port, "protocol": self.protocol})
    }

    pub fn from_json(v: &Value) -> Option<Binding> {
        Some(Binding {
            container_port: v["containerPort"].as_u64()? as u16,
            host_port: v["hostPort"].as_u64()? as u16,
            protocol: v["protocol"].as_str().unwrap_or("tcp").to_string(),
        })
    }
}

enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

async fn bind(protocol: &str, port: u16) -> std::io::Result<Socket> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    Ok(match protocol {
        "udp" => Socket::Udp(UdpSocket::bind(addr).await?),
        _ => Socket::Tcp(TcpListener::bind(addr).await?),
    })
}

/// Binds a free port of the dynamic range, starting at a random place in it.
async fn bind_dynamic(protocol: &str) -> Result<(u16, Socket), String> {
    let span = (DYNAMIC_PORTS.end() - DYNAMIC_PORTS.start()) as u32 + 1;
    let start = u32::from_str_radix(&gantry_control::random_hex(4), 16).unwrap_or(0) % span;
    for i in 0..span {
        let port = DYNAMIC_PORTS.start() + ((start + i) % span) as u16;
        if let Ok(s) = bind(protocol, port).await {
            return Ok((port, s));
        }
    }
    Err("no free port in the dynamic range 32768-60999".into())
}

/// Publishes `wanted` (a container's mappings, or the bindings recorded before a restart) for
/// a task at `ip`. Returns the bindings and the relays' handles; on error nothing stays bound.
pub async fn publish(ip: Ipv4Addr, wanted: &[Binding]) -> Result<(Vec<Binding>, Vec<AbortHandle>), String> {
    let mut bound = Vec::new();
    for w in wanted {
        let (port, socket) = if w.host_port == 0 {
            bind_dynamic(&w.protocol).await?
        } else {
            let s = bind(&w.protocol, w.host_port)
                .await
                .map_err(|e| format!("host port {}/{} is not available: {e}", w.host_port, w.protocol))?;
            (w.host_port, s)
        };
        bound.push((
            Binding {
                container_port: w.container_port,
                host_port: port,
                protocol: w.protocol.clone(),
            },
            socket,
        ));
    }
    let mut handles = Vec::new();
    let mut bindings = Vec::new();
    for (b, socket) in bound {
        let target = SocketAddr::from((ip, b.container_port));
        let h = match socket {
            Socket::Tcp(l) => tokio::spawn(relay_tcp(l, target)).abort_handle(),
            Socket::Udp(s) => tokio::spawn(relay_udp(Arc::new(s), target)).abort_handle(),
        };
        handles.push(h);
        bindings.push(b);
    }
    Ok((bindings, handles))
}

/// What a container definition asks to publish.
pub fn wanted(mappings: &[PortMapping]) -> Vec<Binding> {
    mappings
        .iter()
        .filter_map(|m| {
            Some(Binding {
                container_port: m.container_port? as u16,
                host_port: m.host_port.unwrap_or(0) as u16,
                protocol: m.protocol().to_string(),
            })
        })
        .collect()
}

pub(crate) async fn relay_tcp(listener: TcpListener, target: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            // Out of descriptors or the like: back off rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Clients a UDP relay remembers; the least recently active go first beyond it.
const UDP_CLIENTS: usize = 1024;

/// UDP: one upstream socket per client, relaying replies back to it. Clients idle longest are
/// forgotten once there are too many (their reply relays end with them).
async fn relay_udp(socket: Arc<UdpSocket>, target: SocketAddr) {
    let mut upstreams: HashMap<SocketAddr, (Arc<UdpSocket>, std::time::Instant, AbortHandle)> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        if !upstreams.contains_key(&client) {
            if upstreams.len() >= UDP_CLIENTS {
                let oldest = upstreams.iter().min_by_key(|(_, (_, t, _))| *t).map(|(a, _)| *a);
                if let Some((_, _, h)) = oldest.and_then(|a| upstreams.remove(&a)) {
                    h.abort();
                }
            }
            let Ok(u) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
                continue;
            };
            if u.connect(target).await.is_err() {
                continue;
            }
            let u = Arc::new(u);
            let (back, up) = (socket.clone(), u.clone());
            let replies = tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = up.recv(&mut buf).await {
                    let _ = back.send_to(&buf[..n], client).await;
                }
            });
            upstreams.insert(client, (u, std::time::Instant::now(), replies.abort_handle()));
        }
        if let Some((up, seen, _)) = upstreams.get_mut(&client) {
            *seen = std::time::Instant::now();
            let _ = up.send(&buf[..n]).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn published_ports_relay_tcp_and_udp_and_dynamic_ports_come_from_the_range() {
        // A "task" on loopback: a TCP echo and a UDP echo.
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_port = tcp.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = tcp.accept().await {
                let mut b = [0u8; 5];
                c.read_exact(&mut b).await.unwrap();
                c.write_all(&b).await.unwrap();
            }
        });
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let udp_port = udp.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut b = [0u8; 64];
            while let Ok((n, from)) = udp.recv_from(&mut b).await {
                udp.send_to(&b[..n], from).await.unwrap();
            }
        });
        let wanted = vec![
            Binding {
                container_port: tcp_port,
                host_port: 0,
                protocol: "tcp".into(),
            },
            Binding {
                container_port: udp_port,
                host_port: 0,
                protocol: "udp".into(),
            },
        ];
        let (bindings, handles) = publish(Ipv4Addr::LOCALHOST, &wanted).await.unwrap();
        assert!(
            bindings.iter().all(|b| DYNAMIC_PORTS.contains(&b.host_port)),
            "{bindings:?}"
        );
        let mut c = TcpStream::connect(("127.0.0.1", bindings[0].host_port)).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        u.send_to(b"ping", ("127.0.0.1", bindings[1].host_port)).await.unwrap();
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), u.recv(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b[..n], b"ping");
        // A taken fixed port is refused with a clear error, and nothing stays bound.
        let taken = vec![Binding {
            container_port: 1,
            host_port: bindings[0].host_port,
            protocol: "tcp".into(),
        }];
        let e = publish(Ipv4Addr::LOCALHOST, &taken).await.unwrap_err();
        assert!(e.contains("is not available"), "{e}");
        for h in handles {
            h.abort();
        }
    }
}
