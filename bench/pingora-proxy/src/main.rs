//! A minimal pingora reverse proxy: every request to LISTEN goes to UPSTREAM over pooled
//! HTTP/1.1 connections, on THREADS worker threads. The same job Gantry's data plane and
//! nginx do in scripts/bench-lb.py, for comparing foundations.
//!
//! Usage: pingora-proxy-bench LISTEN UPSTREAM THREADS

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Forward {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream.as_str(), false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, threads] = args.as_slice() else {
        eprintln!("usage: pingora-proxy-bench LISTEN UPSTREAM THREADS");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: threads.parse().expect("THREADS is a number"),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Forward {
            upstream: upstream.clone(),
        },
    );
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
