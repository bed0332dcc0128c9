//! The API's front door against misbehaving clients over real sockets: slow and silent
//! clients are cut off at the header timeout, idle kept-alive connections too, and a source
//! over its connection cap is refused on accept.

use gantry_aws::front::{serve, FrontLimits};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

async fn start(limits: FrontLimits) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    tokio::spawn(serve(listener, router, limits, std::future::pending()));
    addr
}

fn limits(per_source: usize) -> FrontLimits {
    FrontLimits {
        header_timeout: Duration::from_millis(300),
        per_source,
        ..FrontLimits::default()
    }
}

/// How long after `began` the server closes `s` (reads until EOF or reset, at most 5 s),
/// and what it sent before.
fn closed_after(mut s: TcpStream, began: Instant) -> (Duration, String) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut buf, mut got) = ([0u8; 4096], Vec::new());
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (began.elapsed(), String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_silent_and_idle_clients_are_cut_off_at_the_header_timeout() {
    let addr = start(limits(64)).await;
    tokio::task::spawn_blocking(move || {
        let began = Instant::now();
        // Half a request head, never finished.
        let mut half = TcpStream::connect(addr).unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
        // Not a byte.
        let silent = TcpStream::connect(addr).unwrap();
        // One request answered, then idle on the kept-alive connection.
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        for (s, answered) in [(half, false), (silent, false), (idle, true)] {
            let (t, got) = closed_after(s, began);
            assert!(
                t >= Duration::from_millis(200) && t < Duration::from_secs(3),
                "closed after {t:?}"
            );
            assert_eq!(got.ends_with("ok"), answered, "{got}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_over_its_cap_is_refused_and_admitted_again_once_under() {
    let addr = start(limits(3)).await;
    tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(50));
        let over = TcpStream::connect(addr).unwrap();
        let (t, got) = closed_after(over, Instant::now());
        assert!(
            t < Duration::from_millis(250) && got.is_empty(),
            "the fourth was held {t:?}: {got}"
        );
        drop(held);
        std::thread::sleep(Duration::from_millis(100));
        let mut again = TcpStream::connect(addr).unwrap();
        again
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        again.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
    })
    .await
    .unwrap();
}
