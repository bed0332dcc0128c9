//! The load balancer's foundation alone, for `scripts/bench-lb.py --bare`: hyper serving and
//! hyper-util's pooled client, shaped as the data plane is (a current-thread runtime per
//! core, an SO_REUSEPORT socket each, TCP_NODELAY both ways), with no rules, headers,
//! counters or timers. What it adds to a request is what the foundation costs; what Gantry
//! adds beyond it is its own.
//!
//! Usage: bare-proxy LISTEN UPSTREAM
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;

async fn serve(listener: tokio::net::TcpListener, upstream: SocketAddr) {
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
                let resp = client.request(req).await?;
                Ok::<_, hyper_util::client::legacy::Error>(resp.map(|b| b.boxed()))
            }
        });
        tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream] = args.as_slice() else {
        eprintln!("usage: bare-proxy LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let (listen, upstream): (SocketAddr, SocketAddr) = match (listen.parse(), upstream.parse()) {
        (Ok(l), Ok(u)) => (l, u),
        _ => {
            eprintln!("LISTEN and UPSTREAM are socket addresses (ip:port)");
            std::process::exit(2);
        }
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut threads = vec![];
    for _ in 0..cores {
        let socket = gantry_lb::workers::reuseport_listener(listen)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        threads.push(std::thread::spawn(move || {
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(socket) {
                    Ok(l) => serve(l, upstream).await,
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
