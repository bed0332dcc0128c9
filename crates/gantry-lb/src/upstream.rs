//! Connections to targets: a per-worker list of idle HTTP/1.1 connections over hyper's own
//! connection API, in place of hyper-util's pooled client.
//!
//! That client's pool is shared by every thread that holds it: a lock per checkout and per
//! return, a checkout future racing a connect against waiting for a returned connection, and
//! bookkeeping for HTTP/2 it never needs here. A worker already keeps its requests on its own
//! thread, so its connections need no lock: a request takes the most recently returned idle
//! connection that can take it (its buffers and the target's side of it are the warmest, and
//! connections a burst opened and no longer needed age out), or opens one, and gives it back
//! when the response body has been read whole. Each connection runs in a task of its own, as
//! with hyper-util: driving it in the request's task instead saved a little CPU but cost the
//! tail (loaded p99 1.25-2x in seven runs; README).

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// ALB's target connection timeout: a target that went away without a word (its address
/// answers nothing) costs at most this, then a 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept per target on each worker (nginx's `keepalive` is per worker too).
const MAX_IDLE_PER_TARGET: usize = 128;
/// An idle connection unused this long is closed (hyper-util's pool waits 90 s).
const IDLE_FOR: Duration = Duration::from_secs(60);

/// One HTTP/1.1 connection to a target, by its sending half (its connection runs in a task
/// of its own and ends when this is dropped and no exchange is left).
pub struct Target {
    sender: SendRequest<Incoming>,
    addr: SocketAddr,
}

impl Target {
    async fn connect(addr: SocketAddr) -> std::io::Result<Target> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(s) => s?,
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
        };
        // Requests and responses are small writes that must not wait for Nagle.
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(target = %addr, error = %e, "target connection ended");
            }
        });
        Ok(Target { sender, addr })
    }
}

type Idle = HashMap<SocketAddr, VecDeque<(Target, Instant)>>;

thread_local! {
    /// This worker's idle connections to each target, in the order they were returned.
    static IDLE: RefCell<Idle> = RefCell::new(HashMap::new());
    /// Whether this worker's sweeper of idle connections runs.
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

/// The newest idle connection to `addr` that can take a request now, if this worker has one.
/// Closed ones are dropped; one still finishing its last exchange is left for later.
fn checkout(addr: SocketAddr) -> Option<Target> {
    IDLE.with_borrow_mut(|idle| {
        let list = idle.get_mut(&addr)?;
        list.retain(|(t, _)| !t.sender.is_closed());
        let i = list.iter().rposition(|(t, _)| t.sender.is_ready())?;
        list.remove(i).map(|(t, _)| t)
    })
}

/// Keeps a connection whose exchange has ended for the next request to its target.
fn release(t: Target) {
    if t.sender.is_closed() {
        return;
    }
    IDLE.with_borrow_mut(|idle| {
        let list = idle.entry(t.addr).or_default();
        // Full: the connection idle longest goes (it would be taken last).
        if list.len() >= MAX_IDLE_PER_TARGET {
            list.pop_front();
        }
        list.push_back((t, Instant::now()));
    });
    if !SWEEPING.replace(true) {
        tokio::spawn(sweep_forever());
    }
}

/// Closes connections idle too long, and forgets those the target closed meanwhile, so a
/// target that went away leaves nothing open here.
async fn sweep_forever() {
    loop {
        tokio::time::sleep(IDLE_FOR / 4).await;
        sweep(Instant::now());
    }
}

fn sweep(now: Instant) {
    IDLE.with_borrow_mut(|idle| {
        for list in idle.values_mut() {
            list.retain(|(t, since)| now.duration_since(*since) < IDLE_FOR && !t.sender.is_closed());
        }
        idle.retain(|_, list| !list.is_empty());
    });
}

/// How many open idle connections this worker holds to `addr`.
pub fn idle_to(addr: SocketAddr) -> usize {
    IDLE.with_borrow(|idle| {
        idle.get(&addr)
            .map_or(0, |list| list.iter().filter(|(t, _)| !t.sender.is_closed()).count())
    })
}

/// Why a request got no response from its target.
#[derive(Debug)]
pub enum TargetError {
    Connect(std::io::Error),
    Http(hyper::Error),
}

impl std::fmt::Display for TargetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetError::Connect(e) => write!(f, "connect: {e}"),
            TargetError::Http(e) => write!(f, "{e}"),
        }
    }
}

/// Sends `req` (origin-form URI, Host set) to `addr` on an idle connection or a new one, and
/// waits for the response head. A request an idle connection could not take (the target
/// closed it just then, before any of the request was written) is sent again on a new one.
pub async fn request(addr: SocketAddr, mut req: Request<Incoming>) -> Result<Response<TargetBody>, TargetError> {
    loop {
        let (mut target, fresh) = match checkout(addr) {
            Some(t) => (t, false),
            None => match Target::connect(addr).await {
                Ok(t) => (t, true),
                Err(e) => return Err(TargetError::Connect(e)),
            },
        };
        match target.sender.try_send_request(req).await {
            Ok(resp) => return Ok(resp.map(|body| TargetBody::new(body, target))),
            Err(mut e) => match e.take_message() {
                Some(unsent) if !fresh => req = unsent,
                _ => return Err(TargetError::Http(e.into_error())),
            },
        }
    }
}

/// A target's response body; its connection is kept for the next request once the body has
/// been read whole.
pub struct TargetBody {
    inner: Incoming,
    target: Option<Target>,
}

impl TargetBody {
    fn new(inner: Incoming, target: Target) -> TargetBody {
        TargetBody {
            inner,
            target: Some(target),
        }
    }

    fn release(&mut self) {
        if let Some(t) = self.target.take() {
            release(t);
        }
    }
}

impl Body for TargetBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.release();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TargetBody {
    /// A body with nothing to read (HEAD, 204, 304) may never be polled: its connection is
    /// kept all the same. One dropped part-read closes its connection (the client went away).
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A target answering `body` to every request, counting the connections it accepts.
    async fn target(keep_alive: bool, body: Bytes) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                let svc = service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, std::convert::Infallible>(Response::new(Full::new(body))) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        (addr, accepted)
    }

    /// A front forwarding every request to `to` through `request`, as the listeners do.
    async fn front(to: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let resp = match request(to, req).await {
                        Ok(r) => r.map(|b| b.boxed()),
                        Err(_) => {
                            let mut r = Response::new(Full::new(Bytes::new()).map_err(|n| match n {}).boxed());
                            *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                            r
                        }
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
            }
        });
        addr
    }

    /// One request on a connection of its own to `at`: the status and the body.
    async fn call(at: SocketAddr, method: &str) -> (u16, Bytes) {
        let stream = TcpStream::connect(at).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri("/x")
            .header("host", "t")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    /// Lets the front's tasks finish with the last exchange (the body's end, the release).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn a_kept_alive_connection_serves_the_next_requests() {
        let big = Bytes::from(vec![7u8; 1 << 20]);
        let (to, accepted) = target(true, big.clone()).await;
        let at = front(to).await;
        for _ in 0..3 {
            assert_eq!(call(at, "GET").await, (200, big.clone()));
            settle().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(idle_to(to), 1);
        // Nothing to read (HEAD): the body is never polled, the connection is kept all the same.
        assert_eq!(call(at, "HEAD").await.0, 200);
        settle().await;
        assert_eq!((accepted.load(Ordering::SeqCst), idle_to(to)), (1, 1));
    }

    #[tokio::test]
    async fn concurrent_clients_reuse_as_many_connections_as_they_keep_busy() {
        let (to, accepted) = target(true, Bytes::from_static(b"hi")).await;
        let at = front(to).await;
        let clients = (0..8).map(|_| {
            tokio::spawn(async move {
                let stream = TcpStream::connect(at).await.unwrap();
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                for _ in 0..50 {
                    let req = Request::get("/")
                        .header("host", "t")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    let resp = send.send_request(req).await.unwrap();
                    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "hi");
                }
            })
        });
        for c in clients.collect::<Vec<_>>() {
            c.await.unwrap();
        }
        let opened = accepted.load(Ordering::SeqCst);
        assert!(opened <= 8, "{opened} connections for 8 clients");
    }

    #[tokio::test]
    async fn the_most_recently_returned_connection_is_taken_first() {
        // Answers with the number of the connection a request came on; the very first
        // request waits a while, so its connection is returned after the second one's.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let served = Arc::new(AtomicUsize::new(0));
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                n += 1;
                let served = served.clone();
                let svc = service_fn(move |_req| {
                    let first = served.fetch_add(1, Ordering::SeqCst) == 0;
                    async move {
                        if first {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(n.to_string()))))
                    }
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
            }
        });
        let at = front(to).await;
        let slow = tokio::spawn(async move { call(at, "GET").await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(call(at, "GET").await.1, "2", "the first connection was busy");
        assert_eq!(slow.await.unwrap().1, "1");
        settle().await;
        assert_eq!(idle_to(to), 2);
        assert_eq!(call(at, "GET").await.1, "1", "returned last, taken first");
    }

    #[tokio::test]
    async fn a_target_that_closes_gets_a_new_connection_each_time() {
        let (to, accepted) = target(false, Bytes::from_static(b"hi")).await;
        let at = front(to).await;
        for _ in 0..3 {
            assert_eq!(call(at, "GET").await, (200, Bytes::from_static(b"hi")));
            settle().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(idle_to(to), 0);
    }

    #[tokio::test]
    async fn a_connection_the_target_closed_while_idle_is_not_used() {
        // Answers one request as if keeping the connection, then closes it.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                });
            }
        });
        let at = front(to).await;
        assert_eq!(call(at, "GET").await, (200, Bytes::from_static(b"ok")));
        settle().await;
        settle().await;
        assert_eq!(call(at, "GET").await, (200, Bytes::from_static(b"ok")));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_large_upload_streams_through() {
        // The target echoes the request body: it is sent on while it is still being read.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(Response::new(req.into_body()))
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
            }
        });
        let at = front(to).await;
        let upload = Bytes::from((0..4u32 << 20).map(|i| i as u8).collect::<Vec<u8>>());
        let stream = TcpStream::connect(at).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::post("/up")
            .header("host", "t")
            .body(Full::new(upload.clone()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), async {
            let resp = send.send_request(req).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        });
        assert!(resp.await.expect("the upload stalled") == upload);
    }

    #[tokio::test]
    async fn a_target_refusing_connections_is_a_502() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let at = front(closed).await;
        assert_eq!(call(at, "GET").await.0, 502);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_a_while() {
        let (to, _) = target(true, Bytes::from_static(b"hi")).await;
        let at = front(to).await;
        call(at, "GET").await;
        settle().await;
        sweep(Instant::now() + IDLE_FOR / 2);
        assert_eq!(idle_to(to), 1);
        sweep(Instant::now() + IDLE_FOR);
        assert_eq!(idle_to(to), 0);
    }
}
