//! The load balancer's foundation alone, for `scripts/bench-lb.py --bare`: hyper serving and
//! hyper-util's pooled client, shaped as the data plane is (a current-thread runtime per
//! core, an SO_REUSEPORT socket each, TCP_NODELAY both ways), by default with no rules,
//! headers, counters or timers. What it adds to a request is what the foundation costs;
//! what Gantry adds beyond it is its own.
//!
//! FEATURES (for `scripts/bench-lb.py --bare-features`) switches on, one at a time or
//! together, what the data plane adds to each connection and request, to weigh each alone:
//!   auto  hyper-util's auto builder with HTTP/2 on (h2c), as Gantry serves
//!   hrt   hyper's header read timeout (a timer armed for every request head)
//!   ka    the client keep-alive bound: the connection raced against a sleep
//!   tmo   the idle timeout around each request to the upstream (`tokio::time::timeout`)
//!   fifo  upstream connections from a per-thread idle list over hyper's connection API in
//!         place of hyper-util's pool, the oldest idle one taken first
//!   lifo  the same, the most recently returned one taken first (as hyper-util's pool does)
//!   flat  hyper's writes copied into one buffer, not vectored (`writev(false)`), both ways
//!
//! Usage: bare-proxy LISTEN UPSTREAM [FEATURES, comma-separated]
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::time::Duration;

/// Gantry's default idle timeout (ALB's): the header read and request timeouts' length.
const IDLE: Duration = Duration::from_secs(60);
/// Gantry's default client keep-alive (ALB's).
const KEEP_ALIVE: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Default)]
struct Features {
    auto: bool,
    header_read_timeout: bool,
    keep_alive: bool,
    request_timeout: bool,
    /// Upstream connections from this thread's own idle list, and which end it takes from.
    idle_list: Option<Take>,
    /// hyper's writes flattened into one buffer rather than vectored, both ways.
    flat: bool,
}

#[derive(Clone, Copy)]
enum Take {
    Oldest,
    Newest,
}

impl Features {
    fn parse(list: &str) -> Result<Features, String> {
        let mut f = Features::default();
        for name in list.split(',').filter(|n| !n.is_empty()) {
            match name {
                "auto" => f.auto = true,
                "hrt" => f.header_read_timeout = true,
                "ka" => f.keep_alive = true,
                "tmo" => f.request_timeout = true,
                "fifo" => f.idle_list = Some(Take::Oldest),
                "lifo" => f.idle_list = Some(Take::Newest),
                "flat" => f.flat = true,
                other => {
                    return Err(format!(
                        "unknown feature {other:?} (auto, hrt, ka, tmo, fifo, lifo, flat)"
                    ))
                }
            }
        }
        Ok(f)
    }
}

async fn serve(listener: tokio::net::TcpListener, upstream: SocketAddr, f: Features) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .http1_writev(!f.flat)
        .build(connector);
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let client = client.clone();
            async move {
                // Every variant's upstream request goes through here, so tmo bounds each of them.
                let send = async {
                    if let Some(take) = f.idle_list {
                        return idle_list::request(upstream, take, f.flat, req).await;
                    }
                    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
                    *req.uri_mut() = format!("http://{upstream}{path}").parse().expect("a valid URI");
                    Ok::<_, BoxError>(client.request(req).await?.map(|b| b.boxed()))
                };
                if f.request_timeout {
                    tokio::time::timeout(IDLE, send)
                        .await
                        .map_err(|_| "upstream timed out")?
                } else {
                    send.await
                }
            }
        });
        tokio::spawn(serve_connection(TokioIo::new(stream), svc, f));
    }
}

async fn serve_connection<S>(io: TokioIo<tokio::net::TcpStream>, svc: S, f: Features)
where
    S: hyper::service::Service<Request<Incoming>, Response = Reply> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    if f.auto {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder.http1().writev(!f.flat);
        if f.header_read_timeout {
            builder.http1().timer(TokioTimer::new()).header_read_timeout(IDLE);
        }
        drive(builder.serve_connection(io, svc), f.keep_alive).await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.writev(!f.flat);
        if f.header_read_timeout {
            builder.timer(TokioTimer::new()).header_read_timeout(IDLE);
        }
        drive(builder.serve_connection(io, svc), f.keep_alive).await
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Reply = hyper::Response<http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>>;

/// Upstream connections kept by each thread in a list of its own (no lock, no checkout
/// future), over hyper's connection API; each connection is driven by a task of its own.
/// Unbounded and never swept: a benchmark opens a few dozen to one upstream.
mod idle_list {
    use super::{BoxError, Reply, Take};
    use http_body_util::BodyExt;
    use hyper::body::{Body, Frame, Incoming, SizeHint};
    use hyper::client::conn::http1::SendRequest;
    use hyper::Request;
    use hyper_util::rt::TokioIo;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    thread_local! {
        static IDLE: RefCell<VecDeque<SendRequest<Incoming>>> = const { RefCell::new(VecDeque::new()) };
    }

    fn checkout(take: Take) -> Option<SendRequest<Incoming>> {
        IDLE.with_borrow_mut(|idle| {
            idle.retain(|s| !s.is_closed());
            let i = match take {
                Take::Oldest => idle.iter().position(|s| s.is_ready())?,
                Take::Newest => idle.iter().rposition(|s| s.is_ready())?,
            };
            idle.remove(i)
        })
    }

    async fn connect(upstream: SocketAddr, flat: bool) -> Result<SendRequest<Incoming>, BoxError> {
        let stream = tokio::net::TcpStream::connect(upstream).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .writev(!flat)
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// Sends `req` (as the client sent it: origin-form, its own Host) on an idle connection
    /// or a new one; one an idle connection could not take is sent again on a new one.
    pub async fn request(
        upstream: SocketAddr,
        take: Take,
        flat: bool,
        mut req: Request<Incoming>,
    ) -> Result<Reply, BoxError> {
        loop {
            let (mut sender, fresh) = match checkout(take) {
                Some(s) => (s, false),
                None => (connect(upstream, flat).await?, true),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    return Ok(resp.map(|inner| {
                        Returning {
                            inner,
                            sender: Some(sender),
                        }
                        .boxed()
                    }))
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => req = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// A response body that gives its connection back once read whole.
    struct Returning {
        inner: Incoming,
        sender: Option<SendRequest<Incoming>>,
    }

    impl Returning {
        fn give_back(&mut self) {
            if let Some(s) = self.sender.take() {
                IDLE.with_borrow_mut(|idle| idle.push_back(s));
            }
        }
    }

    impl Drop for Returning {
        /// An empty body may never be polled: its connection is kept all the same.
        fn drop(&mut self) {
            if self.inner.is_end_stream() {
                self.give_back();
            }
        }
    }

    impl Body for Returning {
        type Data = bytes::Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            let this = self.get_mut();
            let frame = Pin::new(&mut this.inner).poll_frame(cx);
            if let Poll::Ready(None) = frame {
                this.give_back();
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
}

/// Serves a connection to its end, or (keep_alive) until it ends or a long sleep does.
async fn drive(conn: impl std::future::Future, keep_alive: bool) {
    tokio::pin!(conn);
    if keep_alive {
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = tokio::time::sleep(KEEP_ALIVE) => {}
        }
    } else {
        conn.await;
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream, features) = match args.as_slice() {
        [_, l, u] => (l, u, ""),
        [_, l, u, f] => (l, u, f.as_str()),
        _ => {
            eprintln!("usage: bare-proxy LISTEN UPSTREAM [FEATURES]");
            std::process::exit(2);
        }
    };
    let (listen, upstream): (SocketAddr, SocketAddr) = match (listen.parse(), upstream.parse()) {
        (Ok(l), Ok(u)) => (l, u),
        _ => {
            eprintln!("LISTEN and UPSTREAM are socket addresses (ip:port)");
            std::process::exit(2);
        }
    };
    let f = Features::parse(features).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut threads = vec![];
    for _ in 0..cores {
        let socket = gantry_lb::workers::reuseport_listener(listen)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        threads.push(std::thread::spawn(move || {
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(socket) {
                    Ok(l) => serve(l, upstream, f).await,
                    Err(e) => eprintln!("listening: {e}"),
                }
            })
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
