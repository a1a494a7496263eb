//! What one core does with a parsed request: authenticate, route, and run it on the core that
//! owns its object (here, or forwarded).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Instant;

use serde_json::json;

use super::mesh::{Message, Reply, SendError};
use super::Shard;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::auth::{Access, Permission};
use crate::http::upgrade::BACKUP_PATH;
use crate::http::UpgradeToken;
use crate::http::{encode_response, route, Handler, ObjectTarget, Request, Response, Route};
use crate::id::ObjectId;
use crate::limits::Client;
use crate::metrics::{render, RequestLabels};
use crate::object::{error_answer, overloaded};
use crate::shutdown::Shutdown;
use crate::websocket::{serve_socket, CloseCode, EventSink};
use std::net::IpAddr;

/// The chat page served at `/chat`.
const CHAT_PAGE: &str = include_str!("../../static/chat.html");

/// The fixed body of `--hello` mode.
const HELLO_BODY: &str = "hello\n";

/// Where an upgrade request goes: the object (its class, id, and name if it was reached by
/// one) and the path the object sees.
struct UpgradeTarget {
    class: String,
    id: ObjectId,
    name: Option<String>,
    path: String,
    /// Whether the socket's events may not write (the token has no `write` permission).
    read_only: bool,
}

/// The HTTP handler of one connection.
pub struct CoreHandler {
    /// The core it serves.
    pub shard: Rc<Shard>,
    /// The client's address.
    pub peer: Option<std::net::IpAddr>,
}

impl Handler for CoreHandler {
    fn handle(&self, request: Request) -> Pin<Box<dyn Future<Output = Response>>> {
        let (shard, peer) = (self.shard.clone(), self.peer);
        Box::pin(async move { shard.handle(request, peer).await })
    }

    fn upgrade(
        &self,
        stream: TcpStream,
        unread: Vec<u8>,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = ()>>> {
        let (shard, peer) = (self.shard.clone(), self.peer);
        Box::pin(async move { shard.upgrade(stream, unread, request, peer).await })
    }
}

impl Shard {
    /// Answers one request and counts it.
    pub async fn handle(self: &Rc<Self>, request: Request, peer: Option<IpAddr>) -> Response {
        let start = Instant::now();
        let (labels, response) = self.answer(request, peer).await;
        self.metrics
            .record(labels, response.status, start.elapsed());
        response
    }

    async fn answer(
        self: &Rc<Self>,
        mut request: Request,
        peer: Option<IpAddr>,
    ) -> (RequestLabels, Response) {
        let no_class = |route| RequestLabels {
            route,
            class: String::new(),
        };
        // The admin API checks its own token (`admin.rs`).
        let admin = request.path == "/admin" || request.path.starts_with("/admin/");
        let access = self.auth.access(authorization(&request));
        if request.path != "/healthz" && !admin && matches!(access, Access::Refused) {
            return (no_class("none"), unauthorized());
        }
        let route = match route(request.method, &request.path, &self.config.http) {
            Ok(route) => route,
            Err(response) => return (no_class("none"), response),
        };
        if self.config.hello && !matches!(route, Route::Healthz | Route::Metrics | Route::ChatPage)
        {
            return (no_class("hello"), Response::text(200, HELLO_BODY));
        }
        match route {
            Route::Healthz => (no_class("healthz"), self.health_response()),
            Route::ChatPage => {
                let page = Response::new(200, CHAT_PAGE)
                    .with_header("Content-Type", "text/html; charset=utf-8");
                (no_class("chat"), page)
            }
            Route::Metrics if !access.allows(Permission::Metrics) => {
                (no_class("metrics"), forbidden(&access, "read /metrics"))
            }
            Route::Metrics => (no_class("metrics"), self.metrics_response().await),
            Route::NotFound => (no_class("none"), Response::not_found()),
            Route::Admin { path } => (no_class("admin"), self.admin(&request, &path).await),
            Route::NewId { class } => {
                let response = if !self.registry.contains(&class) {
                    Response::not_found()
                } else if !access.reaches(&class) {
                    forbidden(&access, &format!("reach class {class:?}"))
                } else if let Some(refused) =
                    self.refuse_creation(&class, None, self.client_of(&request, &access, peer))
                {
                    refused
                } else {
                    match ObjectId::new_unique(self.registry.id_namespace(&class)) {
                        Ok(id) => Response::json(200, &json!({ "id": id.to_string() })),
                        Err(error) => Response::json_error(500, &format!("no randomness: {error}")),
                    }
                };
                (
                    RequestLabels {
                        route: "ids",
                        class,
                    },
                    response,
                )
            }
            Route::Object {
                class,
                target,
                path,
            } => {
                if !self.registry.contains(&class) {
                    return (no_class("none"), Response::not_found());
                }
                if !access.reaches(&class) {
                    let response = forbidden(&access, &format!("reach class {class:?}"));
                    return (
                        RequestLabels {
                            route: "object",
                            class,
                        },
                        response,
                    );
                }
                let name = target_name(&target);
                let id = match object_id(self.registry.id_namespace(&class), target) {
                    Ok(id) => id,
                    Err(response) => {
                        return (
                            RequestLabels {
                                route: "object",
                                class,
                            },
                            response,
                        )
                    }
                };
                let response = match self.owner_elsewhere(&id) {
                    // The request as the client sent it, path included.
                    Some(owner) => self.forward(owner, request).await,
                    None => {
                        let client = self.client_of(&request, &access, peer);
                        request.path = path;
                        if !access.allows(Permission::Write) {
                            mark_read_only(&mut request);
                        }
                        self.run_on_owner(&class, id, name, request, client).await
                    }
                };
                (
                    RequestLabels {
                        route: "object",
                        class,
                    },
                    response,
                )
            }
        }
    }

    /// Who sent `request`, for the creation limits: its token when the server checked one
    /// (`access` granted it), else `peer`. Without a token check the header proves nothing,
    /// and a client could name a new one for every request.
    fn client_of(
        &self,
        request: &Request,
        access: &Access,
        peer: Option<IpAddr>,
    ) -> Option<Client> {
        let authorization = match access {
            Access::Granted(_) => authorization(request),
            Access::Open | Access::Refused => None,
        };
        self.creations.client(authorization, peer)
    }

    /// 429 when `client` made its share of new objects of `class` this second (`id`: the
    /// object the request is for, on the core owning it; it counts only if it is new, nothing
    /// stored and not in memory. None: `POST /ids`, which always counts). Nothing is created
    /// then.
    pub(super) fn refuse_creation(
        &self,
        class: &str,
        id: Option<&ObjectId>,
        client: Option<Client>,
    ) -> Option<Response> {
        let client = client?;
        let rate = self.config.creations_per_second(class);
        if rate == 0 || id.is_some_and(|id| !self.host.is_new(id)) {
            return None;
        }
        let wait = self.creations.take(client, class, rate).err()?;
        Some(too_many_creations(class, rate, wait))
    }

    /// Runs the request on the core owning `id`; `client` is who sent it (None: another
    /// object's call, which the creation limits do not count).
    async fn run_on_owner(
        self: &Rc<Self>,
        class: &str,
        id: ObjectId,
        name: Option<String>,
        request: Request,
        client: Option<Client>,
    ) -> Response {
        let owner = id.core(self.partitions, self.cores);
        if owner == self.core {
            if let Some(refused) = self.refuse_creation(class, Some(&id), client) {
                return refused;
            }
            return self
                .host
                .dispatch_named(class, id, name.as_deref(), request)
                .await;
        }
        let class = class.to_string();
        let sent = self.mesh.request(owner, |tag| Message::Dispatch {
            tag,
            class,
            id,
            name,
            request,
            client,
        });
        match sent {
            Ok(wait) => {
                self.metrics
                    .forwarded_total
                    .set(self.metrics.forwarded_total.get() + 1);
                match wait.await {
                    Reply::Response(response) => response,
                    Reply::Snapshot(_) | Reply::Admin(_) => {
                        Response::json_error(500, "cross-core reply of the wrong kind")
                    }
                }
            }
            Err(SendError::Full) => {
                let rejected = self.metrics.forward_rejections_total.get() + 1;
                self.metrics.forward_rejections_total.set(rejected);
                overloaded()
            }
            Err(SendError::Closed) => {
                Response::json(503, &json!({ "error": "shutting down", "retryable": true }))
                    .with_header("Retry-After", "1")
            }
        }
    }

    /// In a cluster: why this node does not serve every object now (a standby, deposed, its
    /// lease not fresh, or a core still replaying its partitions).
    pub(super) fn cluster_refusal(&self) -> Option<String> {
        self.host.cluster_refusal().or_else(|| {
            self.cluster_view
                .as_ref()
                .and_then(|view| view.ownership_refusal())
        })
    }

    /// In a cluster: the owner of `id`'s partition, when it is another node: the request
    /// goes there.
    pub(super) fn owner_elsewhere(&self, id: &ObjectId) -> Option<crate::cluster::Owner> {
        self.cluster_view
            .as_ref()?
            .owner_elsewhere(id.partition(self.partitions))
    }

    /// Sends `request` (as the client sent it) to `owner` and answers with its answer: 421
    /// naming the owner for a request another node already forwarded (no second hop), 503
    /// when the owner gave no address or did not answer.
    async fn forward(&self, owner: crate::cluster::Owner, request: Request) -> Response {
        let (address, (node, generation), client) = match self.forward_route(&owner, &request) {
            Ok(route) => route,
            Err(response) => return response,
        };
        // The client's connection's own headers stay with it (the client sends its own
        // `Host`, `Content-Length` and `Connection`); a value that is not UTF-8 cannot be sent
        // on by the client and is left out.
        let named: Vec<String> = request
            .header("connection")
            .map(|value| {
                value
                    .split(',')
                    .map(|name| name.trim().to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default();
        let target = if request.query.is_empty() {
            request.path
        } else {
            format!("{}?{}", request.path, request.query)
        };
        let mut headers: Vec<(String, String)> = request
            .headers
            .into_iter()
            .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()) && !named.contains(name))
            // The node's own, added below: a client's (or a call's) copy must not decide the
            // owner's answer.
            .filter(|(name, _)| {
                !name.eq_ignore_ascii_case(FORWARDED_BY_HEADER)
                    && !name.eq_ignore_ascii_case(GENERATION_HEADER)
            })
            .filter_map(|(name, value)| Some((name, String::from_utf8(value).ok()?)))
            .collect();
        headers.push((FORWARDED_BY_HEADER.to_string(), node.to_string()));
        headers.push((GENERATION_HEADER.to_string(), generation.to_string()));
        let fetch = crate::object::FetchRequest {
            method: request.method,
            url: format!("http://{address}{target}"),
            headers,
            body: request.body,
        };
        match client.fetch(fetch).await {
            // The owner by this node's view says another node owns it: this node's view is
            // behind. While its lease is fresh it reads the assignment again within a survey,
            // so the client is told to retry; a node cut off from NATS passes the 421 on (the
            // client had better ask another node).
            Ok(response)
                if response.status == 421
                    && response
                        .headers
                        .iter()
                        .any(|(name, _)| name.eq_ignore_ascii_case(MISDIRECTED_HEADER))
                    && self.host.cluster_refusal().is_none() =>
            {
                let error = format!(
                    "the object's partition is changing owner: node {:?} no longer owns it by \
                     its assignment, and this node's will say so within a survey",
                    owner.node
                );
                error_answer(503, &error, true)
            }
            Ok(mut response) => {
                // The connection's own headers; ours are written for the client's connection.
                response.headers.retain(|(name, _)| {
                    let name = name.to_ascii_lowercase();
                    name != "content-length" && !HOP_BY_HOP.contains(&name.as_str())
                });
                response
            }
            Err(error) => {
                self.count_forward_failure();
                forward_failed(&owner, &error)
            }
        }
    }

    /// A call to an object of a partition `owner` serves: sent there as a request to the
    /// object's URL (by name, or `id:` when it has none), with the call's depth and read-only
    /// mark as headers, and the server's `auth_token` when it has one (a call carries no
    /// client's token; the owner keeps the read-only mark, which only restricts).
    async fn forward_call(
        &self,
        owner: crate::cluster::Owner,
        class: &str,
        (id, name): (ObjectId, Option<String>),
        mut request: Request,
    ) -> Response {
        let target = match &name {
            Some(name) => crate::http::percent_encode(name),
            None => format!("id:{id}"),
        };
        // What follows the object in its URL: a path of other characters would name
        // something else at the other node than it does here.
        let path = match request.path.strip_prefix('/') {
            Some(_) => request.path.clone(),
            None => format!("/{}", request.path),
        };
        if !path
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && byte != b'?' && byte != b'#')
        {
            return Response::json_error(
                400,
                "a call to an object on another node needs a path of URL characters \
                 (no spaces, '?' or '#')",
            );
        }
        request.path = format!("/objects/{class}/{target}{path}");
        // The call's own headers (its depth, its read-only mark) must reach the other node:
        // no connection header may name them away, and no hop-by-hop header goes.
        // (`forward` replaces the node's own headers.)
        request.headers.retain(|(name, _)| {
            !name.eq_ignore_ascii_case("authorization")
                && !HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop))
        });
        if let Some(token) = &self.config.auth_token {
            request.headers.push((
                "authorization".to_string(),
                format!("Bearer {token}").into_bytes(),
            ));
        }
        self.forward(owner, request).await
    }

    /// Where a request for `owner` goes, counted as forwarded: its address, this node's id
    /// and the client to send it with; or the answer when it cannot go: 421 for a request
    /// another node already forwarded (no second hop), 503 when the owner gave no address.
    fn forward_route(
        &self,
        owner: &crate::cluster::Owner,
        request: &Request,
    ) -> Result<(String, (&str, u64), &crate::object::FetchClient), Response> {
        let (Some(view), Some(client)) = (&self.cluster_view, &self.forwarder) else {
            return Err(Response::json_error(500, "forwarding outside a cluster"));
        };
        let generation = view
            .assignment()
            .map_or(0, |assignment| assignment.generation);
        if let Some(from) = request.header(FORWARDED_BY_HEADER) {
            // Sent by a node of the cluster that thought this one the owner, from an
            // assignment no older than this node's: this node's view is behind (the partition
            // is changing owner), and the views agree again within a survey. A sender behind
            // this node (or anything else) is answered with the owner.
            let theirs = request
                .header(GENERATION_HEADER)
                .and_then(|theirs| theirs.parse::<u64>().ok());
            let known = from == owner.node || view.knows(from);
            if known && theirs.is_some_and(|theirs| theirs >= generation) {
                let error = format!(
                    "the object's partition is changing owner: node {from:?} forwarded the \
                     request here, and this node's view names {:?}",
                    owner.node
                );
                return Err(error_answer(503, &error, true));
            }
            return Err(misdirected(owner));
        }
        let Some(address) = owner.address.clone() else {
            let reason = "it gave no address (start it with --advertise)";
            return Err(unreachable_owner(owner, reason));
        };
        let forwarded = self.metrics.cluster_forwarded_total.get() + 1;
        self.metrics.cluster_forwarded_total.set(forwarded);
        Ok((address, (view.node(), generation), client))
    }

    fn count_forward_failure(&self) {
        let failures = self.metrics.cluster_forward_failures_total.get() + 1;
        self.metrics.cluster_forward_failures_total.set(failures);
    }

    /// Forwards a WebSocket upgrade (as the client sent it) to `owner`, then carries the
    /// bytes both ways (the owner's answer, then the socket's frames) until one side closes.
    async fn proxy_upgrade(
        &self,
        client: TcpStream,
        unread: Vec<u8>,
        request: Request,
        owner: crate::cluster::Owner,
    ) {
        let (address, (node, generation), peers) = match self.forward_route(&owner, &request) {
            Ok(route) => route,
            Err(response) => {
                write_and_close(client, &response).await;
                return;
            }
        };
        let mut head = forwarded_head(&request, (node, generation));
        head.extend_from_slice(&unread);
        let connected = match peers.connect(&address).await {
            Ok(mut upstream) => match upstream.write_all(&head).await {
                Ok(()) => Ok(upstream),
                Err(error) => Err(error.to_string()),
            },
            Err(error) => Err(error.to_string()),
        };
        let upstream = match connected {
            Ok(upstream) => upstream,
            Err(reason) => {
                self.count_forward_failure();
                write_and_close(client, &unreachable_owner(&owner, &reason)).await;
                return;
            }
        };
        if let Err(error) = pipe(client, upstream, &self.shutdown).await {
            tracing::debug!(%error, "a forwarded WebSocket ended");
        }
    }

    /// A WebSocket upgrade: route it like any request, then serve it on the core that owns its
    /// object, moving the connection there if it was accepted here.
    async fn upgrade(
        self: &Rc<Self>,
        stream: TcpStream,
        unread: Vec<u8>,
        mut request: Request,
        peer: Option<IpAddr>,
    ) {
        if request.path == BACKUP_PATH {
            let start = Instant::now();
            let status = self.stream_backup(stream, &request).await;
            let labels = RequestLabels {
                route: "admin",
                class: String::new(),
            };
            self.metrics.record(labels, status, start.elapsed());
            return;
        }
        let start = Instant::now();
        let access = self.auth.access(authorization(&request));
        let target = self.upgrade_target(&request, &access);
        let UpgradeTarget {
            class,
            id,
            name,
            path,
            read_only,
        } = match target {
            Ok(target) => target,
            Err((labels, response)) => {
                self.metrics
                    .record(labels, response.status, start.elapsed());
                write_and_close(stream, &response).await;
                return;
            }
        };
        if let Some(owner) = self.owner_elsewhere(&id) {
            // The request as the client sent it, path included; the owner counts its answer.
            self.proxy_upgrade(stream, unread, request, owner).await;
            return;
        }
        let client = self.client_of(&request, &access, peer);
        request.path = path;
        if read_only {
            mark_read_only(&mut request);
        }
        let owner = id.core(self.partitions, self.cores);
        if owner == self.core {
            self.serve_upgrade(stream, unread, (class, id, name), request, client)
                .await;
            return;
        }
        // The owner gets its own descriptor of the connection; this core's closes when
        // `stream` drops.
        let fd = match duplicate_fd(&stream) {
            Ok(fd) => fd,
            Err(error) => {
                tracing::warn!(%error, "cannot hand a WebSocket to its core");
                let response = Response::json_error(503, "cannot hand the connection over");
                write_and_close(stream, &response).await;
                return;
            }
        };
        let message = Message::Upgrade {
            fd,
            class,
            id,
            name,
            request,
            unread,
            client,
        };
        if let Err(unsent) = self.mesh.send_upgrade(owner, message) {
            close_fd(unsent);
            let response = Response::json_error(503, "the owning core is not taking connections");
            write_and_close(stream, &response).await;
            return;
        }
        self.metrics
            .websocket_handoffs_total
            .set(self.metrics.websocket_handoffs_total.get() + 1);
    }

    /// Where an upgrade request goes (class, object, the path the object sees), or the response
    /// that refuses it.
    fn upgrade_target(
        &self,
        request: &Request,
        access: &Access,
    ) -> Result<UpgradeTarget, (RequestLabels, Response)> {
        let no_class = |route| RequestLabels {
            route,
            class: String::new(),
        };
        if matches!(access, Access::Refused) {
            return Err((no_class("none"), unauthorized()));
        }
        let route = route(request.method, &request.path, &self.config.http)
            .map_err(|response| (no_class("none"), response))?;
        let Route::Object {
            class,
            target,
            path,
        } = route
        else {
            return Err((no_class("none"), Response::not_found()));
        };
        if !self.registry.contains(&class) || self.config.hello {
            return Err((no_class("none"), Response::not_found()));
        }
        let refusal = if !access.reaches(&class) {
            Some(format!("reach class {class:?}"))
        } else if !access.allows(Permission::WebSocket) {
            Some("open WebSockets".to_string())
        } else {
            None
        };
        if let Some(what) = refusal {
            let labels = RequestLabels {
                route: "object",
                class,
            };
            return Err((labels, forbidden(access, &what)));
        }
        let name = target_name(&target);
        match object_id(self.registry.id_namespace(&class), target) {
            Ok(id) => Ok(UpgradeTarget {
                class,
                id,
                name,
                path,
                read_only: !access.allows(Permission::Write),
            }),
            Err(response) => Err((
                RequestLabels {
                    route: "object",
                    class,
                },
                response,
            )),
        }
    }

    /// Runs the upgrade request (already routed: its path is the one the object sees) on its
    /// object, which this core owns; if the handler accepted a socket, writes the 101 and serves the socket on this connection until it ends.
    pub(super) async fn serve_upgrade(
        self: &Rc<Self>,
        mut stream: TcpStream,
        unread: Vec<u8>,
        (class, id, name): (String, ObjectId, Option<String>),
        mut request: Request,
        client: Option<Client>,
    ) {
        let start = Instant::now();
        if let Some(refused) = self.refuse_creation(&class, Some(&id), client) {
            let labels = RequestLabels {
                route: "object",
                class,
            };
            self.metrics.record(labels, refused.status, start.elapsed());
            write_and_close(stream, &refused).await;
            return;
        }
        let token = self.host.sockets().new_token();
        request.upgrade = Some(UpgradeToken(token));
        let response = self
            .host
            .dispatch_named(&class, id, name.as_deref(), request)
            .await;
        let accepted = self.host.sockets().take_accepted(token);
        self.metrics.record(
            RequestLabels {
                route: "object",
                class,
            },
            response.status,
            start.elapsed(),
        );
        match accepted {
            Some(socket) if response.status == 101 => {
                let mut head = Vec::new();
                encode_response(&response, false, true, &mut head);
                if stream.write_all(&head).await.is_err() {
                    self.host.sockets().remove(socket.id());
                    return;
                }
                // Shutdown already asked every open socket to close: this one missed that.
                if self.shutdown.is_requested() {
                    let _ = socket.close(CloseCode::GOING_AWAY, "the server is shutting down");
                }
                let sink: Rc<dyn EventSink> = self.host.sockets().queue.clone();
                serve_socket(stream, socket, sink, unread).await;
            }
            accepted => {
                if let Some(socket) = accepted {
                    self.host.sockets().remove(socket.id());
                }
                write_and_close(stream, &response).await;
            }
        }
    }

    /// `/healthz`: 200 `ok` while every core's store takes writes (and, in a cluster, this
    /// node holds a fresh lease and was not deposed); else 503 with
    /// `{"status":"unhealthy","cores":[{"core":N,"storage":"unwritable","reason":"..."}]}`
    /// naming each core whose store does not (reads of durable data still work there), and
    /// `"cluster":"<why this node serves nothing>"` after `status` when that is the reason.
    fn health_response(&self) -> Response {
        // This core's store may have failed where no event noticed yet (a compaction).
        self.host.check_store();
        let failures = self.health.failures();
        let cluster = self.cluster_refusal();
        if failures.is_empty() && cluster.is_none() {
            return Response::text(200, "ok");
        }
        // Fields in the documented order (a `json!` map would sort them).
        #[derive(serde::Serialize)]
        struct Unhealthy<'a> {
            status: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            cluster: Option<String>,
            cores: Vec<CoreFailure<'a>>,
        }
        #[derive(serde::Serialize)]
        struct CoreFailure<'a> {
            core: usize,
            storage: &'static str,
            reason: &'a str,
        }
        let cores = failures
            .iter()
            .map(|(core, reason)| CoreFailure {
                core: *core,
                storage: "unwritable",
                reason,
            })
            .collect();
        let body = Unhealthy {
            status: "unhealthy",
            cluster,
            cores,
        };
        Response::json_of(503, &body)
            .unwrap_or_else(|error| Response::json_error(503, &format!("unhealthy: {error}")))
    }

    /// `/metrics`: this core's figures and every other core's, asked for over the mesh.
    async fn metrics_response(self: &Rc<Self>) -> Response {
        let mut snapshots = vec![self.snapshot()];
        let mut waits = Vec::new();
        for core in (0..self.cores).filter(|core| *core != self.core) {
            match self.mesh.request(core, |tag| Message::Snapshot { tag }) {
                Ok(wait) => waits.push(wait),
                Err(error) => tracing::warn!(core, ?error, "no metrics from core"),
            }
        }
        for wait in waits {
            if let Reply::Snapshot(snapshot) = wait.await {
                snapshots.push(*snapshot);
            }
        }
        snapshots.sort_by_key(|snapshot| snapshot.core);
        Response::new(200, render(&snapshots))
            .with_header("Content-Type", "text/plain; version=0.0.4")
    }
}

/// The request's `Authorization` header, as sent.
pub(super) fn authorization(request: &Request) -> Option<&[u8]> {
    request
        .headers
        .iter()
        .find(|(name, _)| name == "authorization")
        .map(|(_, value)| value.as_slice())
}

/// 401: no token, or one the server does not know.
pub(super) fn unauthorized() -> Response {
    Response::json_error(401, "missing or wrong bearer token")
        .with_header("WWW-Authenticate", "Bearer")
}

/// 403: a known token without the permission to `what`.
pub(super) fn forbidden(access: &Access, what: &str) -> Response {
    let name = access.name().unwrap_or("(none)");
    Response::json_error(403, &format!("token {name:?} may not {what}"))
}

/// Makes the request's event read-only (its token may not write); any value the client sent
/// in the header goes.
fn mark_read_only(request: &mut Request) {
    use crate::object::READ_ONLY_HEADER;
    request.headers.retain(|(name, _)| name != READ_ONLY_HEADER);
    request
        .headers
        .push((READ_ONLY_HEADER.to_string(), b"1".to_vec()));
}

/// The header a node adds to a request it forwards to the owner: its own id. A node that
/// gets a request with it and does not serve it answers 503 or 421 instead of forwarding it
/// again.
pub(super) const FORWARDED_BY_HEADER: &str = "stead-forwarded-by";
/// With it, the generation of the assignment the forwarding node went by.
const GENERATION_HEADER: &str = "stead-assignment-generation";
/// On a 421 a node answers itself (not one an object answered): a forwarding node whose lease
/// is fresh turns only those into 503 (its own view of the assignment is behind).
const MISDIRECTED_HEADER: &str = "stead-misdirected";

/// Headers of one connection (RFC 9110 §7.6.1), not sent on by a forwarding node.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// How long the other direction of a forwarded WebSocket may go on once one side closed (the
/// rest of a closing handshake).
const PIPE_LINGER: std::time::Duration = std::time::Duration::from_secs(10);

/// The head of an upgrade request as a node forwards it: the client's request line and
/// headers (their framing aside), the body's length if it has one, and `stead-forwarded-by`.
fn forwarded_head(request: &Request, (node, generation): (&str, u64)) -> Vec<u8> {
    let mut head = format!("{} {}", request.method.as_str(), request.path);
    if !request.query.is_empty() {
        head.push('?');
        head.push_str(&request.query);
    }
    head.push_str(" HTTP/1.1\r\n");
    for (name, value) in &request.headers {
        let framing = name == "content-length" || name == "transfer-encoding";
        // The node's own, added below.
        let ours = name == FORWARDED_BY_HEADER || name == GENERATION_HEADER;
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        if framing || ours || !crate::http::is_token(name) || !crate::http::is_field_value(value) {
            continue;
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !request.body.is_empty() {
        head.push_str(&format!("content-length: {}\r\n", request.body.len()));
    }
    head.push_str(&format!(
        "{FORWARDED_BY_HEADER}: {node}\r\n{GENERATION_HEADER}: {generation}\r\n\r\n"
    ));
    let mut head = head.into_bytes();
    head.extend_from_slice(&request.body);
    head
}

/// Carries bytes between `client` and `upstream` both ways until one side closes, the other
/// then for at most `PIPE_LINGER`, or until the core shuts down.
async fn pipe(client: TcpStream, upstream: TcpStream, shutdown: &Shutdown) -> std::io::Result<()> {
    use std::os::fd::FromRawFd;
    // Each direction reads one descriptor and writes another, so that each can end its own
    // writing side.
    // SAFETY: `duplicate_fd` returns a new descriptor that nothing else owns.
    let client_reader = unsafe { TcpStream::from_raw_fd(duplicate_fd(&client)?) };
    // SAFETY: as above.
    let upstream_reader = unsafe { TcpStream::from_raw_fd(duplicate_fd(&upstream)?) };
    let up = carry(client_reader, upstream);
    let down = carry(upstream_reader, client);
    futures_lite::pin!(up);
    futures_lite::pin!(down);
    let both = async {
        let up_ended = futures_lite::future::or(
            async {
                (&mut up).await;
                true
            },
            async {
                (&mut down).await;
                false
            },
        )
        .await;
        let rest = async {
            if up_ended {
                (&mut down).await
            } else {
                (&mut up).await
            }
        };
        futures_lite::future::or(rest, glommio::timer::sleep(PIPE_LINGER)).await;
    };
    futures_lite::future::or(both, shutdown.wait()).await;
    Ok(())
}

/// Copies what `from` reads to `to` until `from` ends or either fails, then ends `to`'s
/// writing side.
async fn carry(mut from: TcpStream, mut to: TcpStream) {
    use futures_lite::AsyncReadExt;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                if to.write_all(&buffer[..read]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write).await;
}

/// 421 Misdirected Request: this node does not serve the object; `owner` does.
pub(super) fn misdirected(owner: &crate::cluster::Owner) -> Response {
    // Fields in this order (a `json!` map would sort them).
    #[derive(serde::Serialize)]
    struct Misdirected<'a> {
        error: &'a str,
        owner: &'a str,
        address: Option<&'a str>,
    }
    let body = Misdirected {
        error: "this node does not serve the object; send the request to its owner",
        owner: &owner.node,
        address: owner.address.as_deref(),
    };
    Response::json_of(421, &body)
        .unwrap_or_else(|error| Response::json_error(421, &format!("misdirected: {error}")))
        .with_header(MISDIRECTED_HEADER, "1")
}

/// 503 for a request that could not be forwarded to `owner`.
fn unreachable_owner(owner: &crate::cluster::Owner, reason: &str) -> Response {
    let error = format!(
        "this node does not serve the object and could not reach its owner, node {:?}: {reason}",
        owner.node
    );
    error_answer(503, &error, true)
}

/// The answer to a request the owner did not answer: 503 (retry) when it never reached the
/// owner; 504 or 502 when it may have, so a retry could apply it twice.
fn forward_failed(owner: &crate::cluster::Owner, error: &crate::object::FetchError) -> Response {
    use crate::object::FetchError;
    let status = match error {
        FetchError::Connect { .. } | FetchError::Resolve { .. } | FetchError::InvalidUrl { .. } => {
            return unreachable_owner(owner, &error.to_string())
        }
        FetchError::Timeout { .. } => 504,
        _ => 502,
    };
    let error = format!(
        "the owner, node {:?}, did not answer the forwarded request ({error}); it may have \
         been applied",
        owner.node
    );
    error_answer(status, &error, false)
}

/// 429 for a client past its creation limit of `class` (`rate` a second); it may try again
/// after `wait`.
fn too_many_creations(class: &str, rate: u32, wait: std::time::Duration) -> Response {
    let error = format!(
        "too many new objects: at most {rate} new {class:?} objects a second per client; \
         nothing was created"
    );
    let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
    Response::json(429, &json!({ "error": error, "retryable": true }))
        .with_header("Retry-After", &retry_after.to_string())
}

/// Answers a handed-over upgrade that this core has no connection slot for.
pub(super) async fn refuse_upgrade(stream: TcpStream) {
    write_and_close(stream, &overloaded()).await;
}

/// Writes `response` and closes the connection.
pub(super) async fn write_and_close(mut stream: TcpStream, response: &Response) {
    let mut out = Vec::new();
    encode_response(response, false, false, &mut out);
    if stream.write_all(&out).await.is_ok() {
        let _ = stream.shutdown(std::net::Shutdown::Write).await;
    }
}

/// A second descriptor of the connection, for the core that will serve it.
fn duplicate_fd(stream: &TcpStream) -> std::io::Result<std::os::fd::RawFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: dup(2) of a descriptor `stream` owns and keeps open for the duration of the call;
    // the new descriptor is owned by the caller.
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Closes a descriptor that `duplicate_fd` made and nobody took.
pub(super) fn close_fd(fd: std::os::fd::RawFd) {
    // SAFETY: `fd` came from `duplicate_fd` and is owned by nobody else.
    unsafe {
        libc::close(fd);
    }
}

/// The name a route gives its object, if it names it rather than giving its id.
fn target_name(target: &ObjectTarget) -> Option<String> {
    match target {
        ObjectTarget::Name(name) => Some(name.clone()),
        ObjectTarget::Id(_) => None,
    }
}

/// The id a route names: by name (always valid) or by id text (400 when it is not an id of
/// the class whose ids are made from `namespace`).
pub(super) fn object_id(namespace: &str, target: ObjectTarget) -> Result<ObjectId, Response> {
    match target {
        ObjectTarget::Name(name) => Ok(ObjectId::from_name(namespace, &name)),
        ObjectTarget::Id(text) => ObjectId::from_string(namespace, &text)
            .map_err(|error| Response::json_error(400, &error.to_string())),
    }
}

/// The routing objects' stubs call through (`ObjectContext::object`): the way a client's
/// request to the object goes, here or over the mesh to the owning core.
pub(super) struct ShardRouter(pub(super) std::rc::Weak<Shard>);

impl crate::object::Router for ShardRouter {
    fn call(
        &self,
        class: String,
        id: ObjectId,
        name: Option<String>,
        request: Request,
    ) -> futures_lite::future::BoxedLocal<Response> {
        let shard = self.0.upgrade();
        Box::pin(async move {
            match shard {
                Some(shard) => match shard.owner_elsewhere(&id) {
                    Some(owner) => shard.forward_call(owner, &class, (id, name), request).await,
                    None => shard.run_on_owner(&class, id, name, request, None).await,
                },
                None => crate::object::shutting_down(),
            }
        })
    }

    fn is_local(&self, id: ObjectId) -> Option<bool> {
        let shard = self.0.upgrade()?;
        Some(id.core(shard.partitions, shard.cores) == shard.core)
    }
}
