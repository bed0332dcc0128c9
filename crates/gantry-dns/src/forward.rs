//! Relaying queries for names outside Cloud Map to the node's resolvers, byte for byte (the
//! answer is the upstream's, id included), trying each in turn.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// The first answer an upstream gives over UDP whose id matches the query's.
pub async fn udp(upstreams: &[SocketAddr], packet: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams {
        let local: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
        let Ok(sock) = UdpSocket::bind(local).await else {
            continue;
        };
        if sock.connect(up).await.is_err() || sock.send(packet).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65_535];
        let got = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            loop {
                let n = sock.recv(&mut buf).await.ok()?;
                // A connected socket only hears from the upstream; the id must still match.
                if n >= 2 && buf[..2] == packet[..2.min(packet.len())] {
                    return Some(buf[..n].to_vec());
                }
            }
        })
        .await;
        if let Ok(Some(reply)) = got {
            return Some(reply);
        }
    }
    None
}

/// The first answer an upstream gives over TCP (for clients that asked over TCP, usually
/// after a truncated UDP answer).
pub async fn tcp(upstreams: &[SocketAddr], packet: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(packet.len()).ok()?.to_be_bytes();
    for up in upstreams {
        let exchange = async {
            let mut s = TcpStream::connect(up).await.ok()?;
            s.write_all(&len).await.ok()?;
            s.write_all(packet).await.ok()?;
            let mut n = [0u8; 2];
            s.read_exact(&mut n).await.ok()?;
            let mut reply = vec![0u8; u16::from_be_bytes(n) as usize];
            s.read_exact(&mut reply).await.ok()?;
            Some(reply)
        };
        if let Ok(Some(reply)) = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
            return Some(reply);
        }
    }
    None
}
