//! A network load balancer listener: each TCP connection goes whole to one target of the
//! listener's target group; a TLS listener decrypts it first (the target sees plain TCP),
//! and a group with proxy protocol v2 gets the client's address in a header first.

use crate::{proxy_protocol, Shared};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(local) = listener.local_addr() else { return };
    while let Some((client, _)) = crate::next_connection(&listener, &mut stop).await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let Some(view) = shared.listener(local) else { return };
            let peer = client.peer_addr().ok();
            if !peer.is_some_and(|p| shared.client_admitted(&view, p)) {
                return;
            }
            let _ = client.set_nodelay(true);
            if !view.is_secure() {
                return relay(&shared, &view, client, peer, local).await;
            }
            let Some(acceptor) = view.tls.clone() else { return };
            if let Ok(Ok(tls)) = tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(client)).await {
                relay(&shared, &view, tls, peer, local).await;
            }
        });
    }
}

/// Copies one client connection (from `peer` to the listener at `local`) to a target of the
/// listener's group, both ways, until either side closes.
async fn relay<S>(
    shared: &Shared,
    view: &crate::settings::Served,
    mut client: S,
    peer: Option<SocketAddr>,
    local: SocketAddr,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(action) = view.view.default_actions().first() else {
        return;
    };
    let Some(group) = shared.balancer.choose_group(action).and_then(|arn| shared.group(arn)) else {
        return;
    };
    // With no target to take it, the connection is closed (an NLB resets it).
    let sticky = match group.sticky {
        crate::balance::Sticky::SourceIp => peer.and_then(|p| crate::balance::source_ip_target(&group, p.ip())),
        _ => None,
    };
    let Some(pick) = shared.balancer.choose_target(&group, sticky) else {
        return;
    };
    if group.shut_out.contains(&pick.addr) {
        return;
    }
    let Ok(Ok(mut target)) = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(pick.addr)).await
    else {
        return;
    };
    let _ = target.set_nodelay(true);
    if group.proxy_protocol {
        let Some(peer) = peer else { return };
        if target.write_all(&proxy_protocol::proxied(peer, local)).await.is_err() {
            return;
        }
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut target).await;
    drop(pick);
}
