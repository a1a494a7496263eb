//! The accept loop of one core: one task per connection, at most `connections_per_core_max`.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::future::or;
use glommio::net::TcpListener;
use glommio::sync::Semaphore;

use super::handler::CoreHandler;
use super::Shard;
use crate::http::{serve_connection, Handler};

/// After an accept error (out of file descriptors, say), wait this long before the next try
/// instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts until shutdown. Returns the connection slots: all of them are free again once every
/// connection has ended.
pub async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    handler: Rc<CoreHandler>,
) -> Rc<Semaphore> {
    let limits = Rc::new(shard.config.http.clone());
    let slots = Rc::new(Semaphore::new(limits.connections_per_core_max.max(1) as u64));
    let handler: Rc<dyn Handler> = handler;
    loop {
        // A slot first: at the limit, new clients wait in the kernel's backlog.
        let slot = or(async { slots.acquire_static_permit(1).await.ok() }, async {
            shard.shutdown.wait().await;
            None
        })
        .await;
        let Some(slot) = slot else { break };
        let accepted = or(async { Some(listener.accept().await) }, async {
            shard.shutdown.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(stream)) => stream,
            Some(Err(error)) => {
                tracing::warn!(core = shard.core, %error, "accept failed");
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let metrics = &shard.metrics;
        metrics
            .connections_total
            .set(metrics.connections_total.get() + 1);
        metrics
            .connections_open
            .set(metrics.connections_open.get() + 1);
        let (shard, handler, limits) = (shard.clone(), handler.clone(), limits.clone());
        glommio::spawn_local(async move {
            serve_connection(stream, handler, limits, shard.shutdown.clone()).await;
            shard
                .metrics
                .connections_open
                .set(shard.metrics.connections_open.get() - 1);
            drop(slot);
        })
        .detach();
    }
    slots
}
