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
                other => return Err(format!("unknown feature {other:?} (auto, hrt, ka, tmo)")),
            }
        }
        Ok(f)
    }
}

async fn serve(listener: tokio::net::TcpListener, upstream: SocketAddr, f: Features) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let client = client.clone();
            async move {
                let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
                *req.uri_mut() = format!("http://{upstream}{path}").parse().expect("a valid URI");
                let resp = if f.request_timeout {
                    let sent = tokio::time::timeout(IDLE, client.request(req)).await;
                    sent.map_err(|_| "upstream timed out")??
                } else {
                    client.request(req).await?
                };
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(resp.map(|b| b.boxed()))
            }
        });
        tokio::spawn(serve_connection(TokioIo::new(stream), svc, f));
    }
}

async fn serve_connection<S>(io: TokioIo<tokio::net::TcpStream>, svc: S, f: Features)
where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = hyper::Response<http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if f.auto {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        if f.header_read_timeout {
            builder.http1().timer(TokioTimer::new()).header_read_timeout(IDLE);
        }
        drive(builder.serve_connection(io, svc), f.keep_alive).await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        if f.header_read_timeout {
            builder.timer(TokioTimer::new()).header_read_timeout(IDLE);
        }
        drive(builder.serve_connection(io, svc), f.keep_alive).await
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
