//! The store conformance suite against a real 3-member etcd cluster (Debian's etcd-server),
//! started on free loopback ports in temporary directories and killed afterwards. Also: a
//! member can be lost without losing reads or writes.

use gantry_store::{EtcdStore, Store};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct EtcdCluster {
    members: Vec<Child>,
    clients: Vec<String>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl EtcdCluster {
    fn start(size: usize) -> EtcdCluster {
        let etcd = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file())
            .expect("etcd is not installed: run scripts/install-deps.sh (Debian's etcd-server)");
        let dir = tempfile::tempdir().unwrap();
        let peers: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let clients: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let initial: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}"))
            .collect();
        let token = format!("gantry-test-{}-{}", std::process::id(), rand_suffix());
        let members = (0..size)
            .map(|i| {
                let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
                Command::new(etcd)
                    .args(["--name", &format!("m{i}")])
                    .arg("--data-dir")
                    .arg(dir.path().join(format!("m{i}")))
                    .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", clients[i])])
                    .args(["--advertise-client-urls", &format!("http://127.0.0.1:{}", clients[i])])
                    .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", peers[i])])
                    .args([
                        "--initial-advertise-peer-urls",
                        &format!("http://127.0.0.1:{}", peers[i]),
                    ])
                    .args(["--initial-cluster", &initial.join(",")])
                    .args(["--initial-cluster-token", &token, "--initial-cluster-state", "new"])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("starting etcd")
            })
            .collect();
        EtcdCluster {
            members,
            clients: clients.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            _dir: dir,
        }
    }

    /// A store on the whole cluster, once every member answers on its own.
    async fn store(&self, namespace: &str) -> EtcdStore {
        let deadline = Instant::now() + Duration::from_secs(30);
        for member in self.clients.iter().take(self.members.len()) {
            loop {
                if let Ok(s) = EtcdStore::connect(std::slice::from_ref(member), namespace).await {
                    if s.revision().await.is_ok() {
                        break;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {member} did not become ready in 30 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        EtcdStore::connect(&self.clients, namespace).await.unwrap()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

fn rand_suffix() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_passes_the_store_conformance_suite() {
    let cluster = Arc::new(EtcdCluster::start(3));
    cluster.store("/warmup/").await;
    let n = Arc::new(AtomicU32::new(0));
    gantry_store::conformance::run(|| {
        let cluster = cluster.clone();
        let n = n.clone();
        async move {
            let ns = format!("/conformance-{}/", n.fetch_add(1, Ordering::SeqCst));
            Arc::new(cluster.store(&ns).await) as Arc<dyn Store>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_one_member_of_three_keeps_reads_and_writes() {
    let mut cluster = EtcdCluster::start(3);
    let s = cluster.store("/quorum/").await;
    let r = s.create("/k", b"1").await.unwrap();
    let mut lost = cluster.members.remove(2);
    lost.kill().unwrap();
    lost.wait().unwrap();
    // The client fails over to the members left; a write may need a retry while it does.
    let deadline = Instant::now() + Duration::from_secs(20);
    let r2 = loop {
        match s.update("/k", b"2", r).await {
            Ok(r2) => break r2,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no write within 20 s of losing one member: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(s.get("/k").await.unwrap().unwrap().mod_revision, r2);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_leader_and_the_next_takes_over_when_it_dies() {
    let cluster = EtcdCluster::start(3);
    let (a, b) = (cluster.store("/elect/").await, Arc::new(cluster.store("/elect/").await));
    let ttl = Duration::from_secs(3);
    let first = a.campaign("controllers", "server-a", ttl).await.unwrap();
    // While the first holds the role, the second waits.
    let b2 = b.clone();
    let second = tokio::spawn(async move { b2.campaign("controllers", "server-b", ttl).await });
    tokio::time::sleep(Duration::from_secs(2 * ttl.as_secs())).await;
    assert!(!second.is_finished(), "two leaders at once");
    assert!(!*first.lost().borrow(), "a live leader keeps its role");
    // The leader dies (no resignation): the role moves within the lease's ttl and a bit.
    let died = Instant::now();
    drop(first);
    let next = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("a new leader within 10 s of the old one's death")
        .unwrap()
        .unwrap();
    assert!(
        died.elapsed() >= Duration::from_secs(1),
        "took over before the lease could expire"
    );
    // Resigning hands over at once.
    let a2 = Arc::new(a);
    let c = a2.clone();
    let third = tokio::spawn(async move { c.campaign("controllers", "server-a", ttl).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resigned = Instant::now();
    next.resign().await.unwrap();
    let third = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        resigned.elapsed() < Duration::from_secs(3),
        "resigning hands over without waiting for the ttl"
    );
    third.resign().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_learns_when_it_lost_the_role() {
    let mut cluster = EtcdCluster::start(1);
    let s = cluster.store("/lost/").await;
    let leader = s.campaign("controllers", "me", Duration::from_secs(2)).await.unwrap();
    let mut lost = leader.lost();
    assert!(!*lost.borrow());
    // Its etcd goes away: the lease cannot be renewed.
    for m in &mut cluster.members {
        m.kill().unwrap();
        m.wait().unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), lost.wait_for(|l| *l))
        .await
        .expect("the leader notices within 10 s")
        .unwrap();
}

/// The member's count of open watchers, from its metrics.
fn etcd_watchers(client: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(client).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {client}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .expect("etcd reports its watchers")
        .trim()
        .parse()
        .unwrap()
}

/// A watch dropped by its watcher is cancelled on the server even when its prefix never
/// changes again: an open stream per dropped watch would pile up in etcd.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_watch_of_a_quiet_prefix_is_cancelled() {
    let cluster = EtcdCluster::start(1);
    let s = cluster.store("/dropped/").await;
    let before = etcd_watchers(&cluster.clients[0]);
    let mut kept = s.watch("/busy/", 0).await.unwrap();
    for _ in 0..10 {
        drop(s.watch("/quiet/", 0).await.unwrap());
    }
    s.create("/busy/a", b"x").await.unwrap();
    assert_eq!(kept.events.recv().await.unwrap().unwrap().kv.key, "/busy/a");
    let deadline = Instant::now() + Duration::from_secs(10);
    while etcd_watchers(&cluster.clients[0]) > before + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        etcd_watchers(&cluster.clients[0]),
        before + 1,
        "only the kept watch is open"
    );
}
