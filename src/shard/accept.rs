//! The accept loop of one core: one task per connection, at most `connections_per_core_max`
//! (a WebSocket handed over from another core takes one of these slots too). With TLS each
//! connection's handshake runs here first (`crate::tls`).

use std::rc::Rc;
use std::time::Duration;

use futures_lite::future::or;
use glommio::net::TcpListener;
use glommio::sync::{Semaphore, StaticPermit};

use super::handler::CoreHandler;
use super::Shard;
use crate::http::{serve_connection, Handler};

/// After an accept error (out of file descriptors, say), wait this long before the next try
/// instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// One of the core's `connections_per_core_max` slots, held by a connection while it is open
/// on this core; counted in `stead_connections_open`.
pub struct ConnectionSlot {
    /// The core whose count this is.
    shard: Rc<Shard>,
    /// Returned to the core's slots on drop.
    _permit: StaticPermit,
}

impl ConnectionSlot {
    fn new(shard: Rc<Shard>, permit: StaticPermit) -> ConnectionSlot {
        let open = &shard.metrics.connections_open;
        open.set(open.get() + 1);
        ConnectionSlot {
            shard,
            _permit: permit,
        }
    }

    /// A slot for a connection handed over from another core, if one is free now (a socket
    /// that arrives cannot wait in the kernel's backlog).
    pub fn try_take(shard: &Rc<Shard>) -> Option<ConnectionSlot> {
        let permit = shard.connection_slots.try_acquire_static_permit(1).ok()?;
        Some(ConnectionSlot::new(shard.clone(), permit))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let open = &self.shard.metrics.connections_open;
        open.set(open.get() - 1);
    }
}

/// The core's connection slots; all of them are free again once every connection has ended.
pub fn connection_slots(connections_per_core_max: usize) -> Rc<Semaphore> {
    Rc::new(Semaphore::new(connections_per_core_max.max(1) as u64))
}

/// Accepts until shutdown.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let limits = Rc::new(shard.config.http.clone());
    let slots = shard.connection_slots.clone();
    loop {
        // A slot first: at the limit, new clients wait in the kernel's backlog.
        let permit = or(async { slots.acquire_static_permit(1).await.ok() }, async {
            shard.shutdown.wait().await;
            None
        })
        .await;
        let Some(permit) = permit else { break };
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
        let total = &shard.metrics.connections_total;
        total.set(total.get() + 1);
        let slot = ConnectionSlot::new(shard.clone(), permit);
        // Each connection's handler knows its client's address (the creation limits count
        // clients without a bearer token by it).
        let handler: Rc<dyn Handler> = Rc::new(CoreHandler {
            shard: shard.clone(),
            peer: stream.peer_addr().ok().map(|address| address.ip()),
        });
        let (shutdown, limits) = (shard.shutdown.clone(), limits.clone());
        let acceptor = shard.tls.as_ref().map(|tls| tls.acceptor());
        let shard = shard.clone();
        glommio::spawn_local(async move {
            // With TLS the connection loop gets the plain side of the handshaken connection
            // (`tls.rs`); the handshake holds the slot too.
            let stream = match acceptor {
                None => stream,
                Some(acceptor) => {
                    let timeouts = (
                        Duration::from_millis(limits.idle_connection_timeout_ms),
                        Duration::from_millis(limits.write_timeout_ms),
                    );
                    // The pump holds the slot too: the core's limit and its shutdown drain
                    // count it until the client's connection ends.
                    let slot = Rc::new(slot);
                    let pump_slot = slot.clone();
                    match crate::tls::terminate(stream, acceptor, timeouts, pump_slot).await {
                        Ok(plain) => {
                            serve_connection(plain, handler, limits, shutdown).await;
                            drop(slot);
                            return;
                        }
                        Err(error) => {
                            tracing::debug!(%error, "TLS handshake failed");
                            let failures = &shard.metrics.tls_handshake_failures_total;
                            failures.set(failures.get() + 1);
                            return;
                        }
                    }
                }
            };
            serve_connection(stream, handler, limits, shutdown).await;
            drop(slot);
        })
        .detach();
    }
}
