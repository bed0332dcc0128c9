//! The API's front door: what one client can hold. A request head must arrive within the
//! header timeout (slowloris clients that trickle a header are cut off, and so are idle
//! keep-alive connections), and a source address may hold only so many connections at once
//! (the whole listener too): a connection over either cap is closed on accept, before it
//! costs a task. Bodies are read within `server::BODY_TIMEOUT`.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bounds on the API's connections.
#[derive(Debug, Clone, Copy)]
pub struct FrontLimits {
    /// How long a client may take to send a request head (and wait idle before one).
    pub header_timeout: Duration,
    /// How often an idle HTTP/2 connection is pinged.
    pub idle_timeout: Duration,
    /// Connections one source address may hold at once.
    pub per_source: usize,
    /// Connections the listener holds at once, from all sources.
    pub total: usize,
}

impl Default for FrontLimits {
    fn default() -> Self {
        FrontLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            per_source: 512,
            total: 16_384,
        }
    }
}

/// Largest request head (ECS's and the Query services' requests carry a few KB).
const MAX_HEAD: usize = 64 << 10;

/// Open connections, per source address and in all.
#[derive(Default)]
pub struct Census {
    by_source: Mutex<(HashMap<IpAddr, usize>, usize)>,
}

/// One admitted connection; its count is given back when it drops.
pub struct Admitted {
    census: Arc<Census>,
    source: IpAddr,
}

impl Census {
    /// Admits a connection from `source` if neither cap is reached.
    pub fn admit(self: &Arc<Self>, source: IpAddr, limits: &FrontLimits) -> Option<Admitted> {
        let mut guard = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        let (map, total) = &mut *guard;
        let held = map.get(&source).copied().unwrap_or(0);
        if held >= limits.per_source || *total >= limits.total {
            return None;
        }
        map.insert(source, held + 1);
        *total += 1;
        Some(Admitted {
            census: self.clone(),
            source,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut guard = self.census.by_source.lock().unwrap_or_else(|p| p.into_inner());
        let (map, total) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(n) = map.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes; then stops
/// accepting and lets open connections finish for up to ten seconds.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: FrontLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let census = Arc::new(Census::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut refused_logged: Option<std::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of descriptors and the like: back off rather than spin.
                Err(e) => {
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Some(admitted) = census.admit(peer.ip(), &limits) else {
            // Said at most every ten seconds: a flood must not flood the log too.
            if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                refused_logged = Some(std::time::Instant::now());
                tracing::warn!(source = %peer.ip(), "API connection refused: too many connections held");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, stop) = (router.clone(), stop_rx.clone());
        tokio::spawn(async move {
            serve_connection(stream, router, limits, stop).await;
            drop(admitted);
        });
    }
    drop(stop_rx);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(10), stop_tx.closed());
    let _ = drained.await;
    Ok(())
}

/// HTTP/1.1 or HTTP/2 on one connection. hyper bounds each HTTP/1 request head (and the
/// idle wait before it) by the header timeout; before hyper knows the protocol it has no
/// timer, so a connection that sends nothing at all is dropped here after that long. HTTP/2
/// connections are pinged, and dropped when the client stops answering.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: axum::Router,
    limits: FrontLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD as u32)
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.header_timeout);
    let heard = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let io = FirstByte {
        inner: stream,
        heard: heard.clone(),
    };
    let svc = hyper_util::service::TowerToHyperService::new(router);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let silent = async {
        tokio::time::sleep(limits.header_timeout).await;
        if heard.load(std::sync::atomic::Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = conn.as_mut() => return,
        // Not a byte within the header timeout: dropped, unanswered.
        _ = silent => return,
        _ = stop.changed() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
}

/// A stream that notes its first byte read.
struct FirstByte {
    inner: tokio::net::TcpStream,
    heard: Arc<std::sync::atomic::AtomicBool>,
}

impl tokio::io::AsyncRead for FirstByte {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }
}

impl tokio::io::AsyncWrite for FirstByte {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
