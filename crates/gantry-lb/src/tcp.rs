//! A network load balancer listener: each TCP connection goes whole to one target of the
//! listener's target group.

use crate::Shared;
use std::sync::Arc;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(local) = listener.local_addr() else { return };
    loop {
        let (mut client, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%local, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let Some(view) = shared.listener(local) else { return };
            let Some(action) = view.view.default_actions().first() else {
                return;
            };
            let Some(group) = shared.balancer.choose_group(action).and_then(|arn| shared.group(arn)) else {
                return;
            };
            // With no target to take it, the connection is closed (an NLB resets it).
            let Some(pick) = shared.balancer.choose_target(&group) else {
                return;
            };
            let Ok(Ok(mut target)) =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(pick.addr)).await
            else {
                return;
            };
            let _ = (client.set_nodelay(true), target.set_nodelay(true));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut target).await;
            drop(pick);
        });
    }
}
