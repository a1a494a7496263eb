//! stead: a Durable Objects engine.
//!
//! A Durable Object is a named, single-threaded object with its own durable storage and alarms,
//! reached over HTTP. stead runs one pinned glommio executor per core (thread-per-core on
//! io_uring); an object id hashes to exactly one core, and only that core ever touches the
//! object. Each core has its own storage engine instance (`stead-storage`).
//!
//! Use it as a binary (`stead serve`) or embed it:
//!
//! ```no_run
//! use stead::{DurableObject, ObjectContext, ObjectError, Request, Response};
//!
//! struct Hello {
//!     context: ObjectContext,
//! }
//!
//! impl DurableObject for Hello {
//!     fn new(context: ObjectContext) -> Hello {
//!         Hello { context }
//!     }
//!     async fn fetch(&self, _request: Request) -> Result<Response, ObjectError> {
//!         Ok(Response::text(200, format!("hello from {}", self.context.id())))
//!     }
//! }
//!
//! let server = stead::Server::builder().class::<Hello>("hello").build();
//! server.run().expect("server failed");
//! ```
//!
//! Layout:
//! - `config`: every limit, named with its unit last.
//! - `id`: object ids and their placement on cores.
//! - `http`: request parsing, routing, responses, the connection loop.
//! - `object`: the object model: the [`DurableObject`] trait, its context and storage, the
//!   per-core host that activates objects, delivers events and gates output on durability;
//!   the class registry and the class migrations (`[[migrations]]`: renamed and deleted
//!   classes); `object/sql/`: each object's SQLite database, whose pages are values of the
//!   object.
//! - `shard`: one core: executor start-up (with the check of its objects' classes), the
//!   listener, forwarding to the owning core.
//! - `objects`: the built-in classes (`counter`, `ratelimiter`, `sqlratelimiter`, `sessions`, …).
//! - `server`: the builder and the running server.
//! - `auth`: the bearer tokens a server takes and what each grants (classes, write,
//!   WebSockets, metrics, admin); the token file and its reload on SIGHUP.
//! - `limits`: object creation limits.
//! - `tls`: HTTPS and WSS on the listener (rustls; the handshake on the accepting core, then a
//!   socket pair to the connection loop), and the TLS client settings of `stead bench`/`admin`.
//! - `encryption`: the key file of encryption at rest, handed to every store (the engine seals
//!   each record).
//! - `bench`: the load generator behind `stead bench`.
//! - `cluster`: replication of every commit through NATS JetStream, on a control thread of
//!   its own (`stead serve --cluster`).
//! - `wake`, `shutdown`: the wake-up primitives of a core, and its shutdown signal.
//!
//! What it is not (yet): a distributed system of many serving nodes. A cluster today is one
//! node that owns every partition and replicates each write to a NATS JetStream stream before
//! answering; another node can take over from it (see `cluster`), but nothing moves partitions
//! between nodes or takes over on its own.

pub mod alarm;
pub mod auth;
pub mod backup;
pub mod bench;
pub mod cluster;
pub mod config;
pub mod encryption;
pub mod http;
pub mod id;
pub mod layout;
pub mod limits;
pub mod metrics;
pub mod object;
pub mod objects;
pub mod server;
mod shard;
pub mod shutdown;
pub mod tls;
pub mod wake;
pub mod websocket;

pub use config::Config;
pub use http::{Method, Request, Response};
pub use id::ObjectId;
pub use object::{AlarmInfo, DurableObject, ObjectContext, ObjectError, Storage};
pub use server::{RunningServer, Server, ServerBuilder, ServerError};
