//! The node's DNS resolver for tasks: answers Cloud Map's DNS namespaces from the store (the
//! healthy instances of each service, as Route 53 would) and relays every other query to the
//! node's own resolvers. It listens on the task bridge's gateway address, which the tasks'
//! resolv.conf names; packets and their parsing are hickory-proto's.
//!
//! It follows the records through a long-polling `Fetch` (the store's watch in `gantry dev`,
//! the agent protocol on a cluster node), so a registration or a health change is answered
//! within milliseconds; record TTLs (from the service's DnsConfig) bound how long clients
//! cache.

mod answer;
mod forward;

pub use answer::{answer, Decision, MULTIVALUE_MAX};

use gantry_control::cloudmap::DnsTable;
use gantry_store::KeyValue;
use hickory_proto::op::{Edns, Message, ResponseCode};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// Queries being relayed at once; more wait (a flood cannot grow memory without bound).
const MAX_FORWARDS: usize = 512;
/// TCP clients served at once.
const MAX_TCP_CLIENTS: usize = 128;
/// How long a TCP client may take to send its next query.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The UDP payload Gantry answers with when a client announces EDNS (the DNS flag day's size).
const EDNS_PAYLOAD: u16 = 1232;

pub struct Options {
    /// Where tasks reach it: the node bridge's gateway address (port 53).
    pub listen: SocketAddr,
    /// The node's resolvers, tried in order for names outside Cloud Map's namespaces.
    pub upstreams: Vec<SocketAddr>,
}

/// The nameservers of a resolv.conf (port 53), for `Options::upstreams`.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next())?
        })
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

struct Shared {
    table: RwLock<Arc<DnsTable>>,
    upstreams: Vec<SocketAddr>,
    forwards: Semaphore,
    tcp_clients: Arc<Semaphore>,
}

impl Shared {
    fn table(&self) -> Arc<DnsTable> {
        self.table.read().expect("not poisoned").clone()
    }
}

/// Where the Cloud Map records come from: given the revision last seen (0 at first), the
/// records once they change after it (or the same ones after a while) and their revision.
pub type Fetch =
    Arc<dyn Fn(i64) -> Pin<Box<dyn Future<Output = Result<(Vec<KeyValue>, i64), String>> + Send>> + Send + Sync>;

/// Binds the resolver's sockets now (so a node whose port 53 is taken fails at start, not on
/// the first lookup), then serves until `stop`.
pub async fn bind_and_run(
    fetch: Fetch,
    opts: Options,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let udp = UdpSocket::bind(opts.listen).await?;
    let tcp = TcpListener::bind(opts.listen).await?;
    let shared = Arc::new(Shared {
        table: RwLock::new(Arc::new(DnsTable::default())),
        upstreams: opts.upstreams,
        forwards: Semaphore::new(MAX_FORWARDS),
        tcp_clients: Arc::new(Semaphore::new(MAX_TCP_CLIENTS)),
    });
    Ok(tokio::spawn(async move {
        let udp_task = tokio::spawn(serve_udp(shared.clone(), Arc::new(udp)));
        let tcp_task = tokio::spawn(serve_tcp(shared.clone(), tcp));
        follow(&shared, fetch, stop).await;
        udp_task.abort();
        tcp_task.abort();
    }))
}

/// Keeps the table current from the fetched records; a failed fetch is retried after a
/// second (the last table keeps answering meanwhile).
async fn follow(shared: &Shared, fetch: Fetch, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut seen = 0;
    loop {
        let got = tokio::select! {
            r = fetch(seen) => r,
            _ = stop.changed() => return,
        };
        match got {
            Ok((kvs, rev)) => {
                *shared.table.write().expect("not poisoned") = Arc::new(DnsTable::from_listing(&kvs));
                seen = rev;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading Cloud Map records");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// The bytes to send back for one query, or None to stay silent (not a DNS message at all).
async fn respond(shared: &Shared, packet: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let query = match Message::from_vec(packet) {
        Ok(q) => q,
        Err(_) => return formerr(packet),
    };
    match answer(&shared.table(), &query, random()) {
        Decision::Answer(mut reply) => {
            if query.edns.is_some() {
                let mut edns = Edns::new();
                edns.set_max_payload(EDNS_PAYLOAD);
                reply.set_edns(edns);
            }
            let bytes = reply.to_vec().ok()?;
            if !tcp && bytes.len() > query.max_payload() as usize {
                return reply.truncate().to_vec().ok();
            }
            Some(bytes)
        }
        Decision::Forward => {
            let _permit = shared.forwards.acquire().await.ok()?;
            let relayed = if tcp {
                forward::tcp(&shared.upstreams, packet).await
            } else {
                forward::udp(&shared.upstreams, packet).await
            };
            relayed.or_else(|| {
                let mut fail = Message::error_msg(query.metadata.id, query.metadata.op_code, ResponseCode::ServFail);
                fail.add_queries(query.queries.iter().cloned());
                fail.metadata.recursion_desired = query.metadata.recursion_desired;
                fail.to_vec().ok()
            })
        }
    }
}

/// FORMERR for a message whose header is readable but whose body is not.
fn formerr(packet: &[u8]) -> Option<Vec<u8>> {
    if packet.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    Message::error_msg(id, hickory_proto::op::OpCode::Query, ResponseCode::FormErr)
        .to_vec()
        .ok()
}

async fn serve_udp(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "dns: receiving");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let packet = buf[..n].to_vec();
        let (shared, socket) = (shared.clone(), socket.clone());
        tokio::spawn(async move {
            if let Some(reply) = respond(&shared, &packet, false).await {
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}

async fn serve_tcp(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "dns: accepting");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A full house closes the newcomer rather than queueing it.
        let Ok(permit) = shared.tcp_clients.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_tcp_client(&shared, stream).await;
        });
    }
}

/// Length-prefixed queries on one connection, until it closes or idles.
async fn serve_tcp_client(shared: &Shared, mut stream: TcpStream) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut packet = vec![0u8; u16::from_be_bytes(len) as usize];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(reply) = respond(shared, &packet, true).await else {
            return;
        };
        let Ok(n) = u16::try_from(reply.len()) else { return };
        if stream.write_all(&n.to_be_bytes()).await.is_err() || stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// A fresh pseudo-random number per query (splitmix64 over a counter seeded at start): where
/// a rotation starts, which instance a WEIGHTED answer names.
fn random() -> u64 {
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU64> = std::sync::OnceLock::new();
    let counter = NEXT.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
        std::sync::atomic::AtomicU64::new(u64::from_ne_bytes(b))
    });
    let mut z = counter.fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The gateway address tasks reach the resolver on, as a listen address.
pub fn listen_on(gateway: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(gateway.into(), 53)
}
