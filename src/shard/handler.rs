//! What one core does with a parsed request: authenticate, route, and run it on the core that
//! owns its object (here, or forwarded).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Instant;

use serde_json::json;

use super::mesh::{Message, Reply, SendError};
use super::Shard;
use crate::http::{route, Handler, ObjectTarget, Request, Response, Route};
use crate::id::ObjectId;
use crate::metrics::{render, RequestLabels};

/// The fixed body of `--hello` mode.
const HELLO_BODY: &str = "hello\n";

/// The HTTP handler of one core.
pub struct CoreHandler {
    /// The core it serves.
    pub shard: Rc<Shard>,
}

impl Handler for CoreHandler {
    fn handle(&self, request: Request) -> Pin<Box<dyn Future<Output = Response>>> {
        let shard = self.shard.clone();
        Box::pin(async move { shard.handle(request).await })
    }
}

impl Shard {
    /// Answers one request and counts it.
    pub async fn handle(self: &Rc<Self>, request: Request) -> Response {
        let start = Instant::now();
        let (labels, response) = self.answer(request).await;
        self.metrics
            .record(labels, response.status, start.elapsed());
        response
    }

    async fn answer(self: &Rc<Self>, mut request: Request) -> (RequestLabels, Response) {
        let no_class = |route| RequestLabels {
            route,
            class: String::new(),
        };
        if request.path != "/healthz" && !self.authorized(&request) {
            let response = Response::json_error(401, "missing or wrong bearer token")
                .with_header("WWW-Authenticate", "Bearer");
            return (no_class("none"), response);
        }
        let route = match route(request.method, &request.path, &self.config.http) {
            Ok(route) => route,
            Err(response) => return (no_class("none"), response),
        };
        if self.config.hello && !matches!(route, Route::Healthz | Route::Metrics) {
            return (no_class("hello"), Response::text(200, HELLO_BODY));
        }
        match route {
            Route::Healthz => (no_class("healthz"), Response::text(200, "ok")),
            Route::Metrics => (no_class("metrics"), self.metrics_response().await),
            Route::NotFound => (no_class("none"), Response::not_found()),
            Route::NewId { class } => {
                let response = if !self.registry.contains(&class) {
                    Response::not_found()
                } else {
                    match ObjectId::new_unique(&class) {
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
                let id = match target {
                    ObjectTarget::Name(name) => ObjectId::from_name(&class, &name),
                    ObjectTarget::Id(text) => match ObjectId::from_string(&class, &text) {
                        Ok(id) => id,
                        Err(error) => {
                            let response = Response::json_error(400, &error.to_string());
                            return (
                                RequestLabels {
                                    route: "object",
                                    class,
                                },
                                response,
                            );
                        }
                    },
                };
                request.path = path;
                let response = self.run_on_owner(&class, id, request).await;
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

    /// Runs the request on the core owning `id`.
    async fn run_on_owner(
        self: &Rc<Self>,
        class: &str,
        id: ObjectId,
        request: Request,
    ) -> Response {
        let owner = id.core(self.partitions, self.cores);
        if owner == self.core {
            return self.host.dispatch(class, id, request).await;
        }
        let class = class.to_string();
        let sent = self.mesh.request(owner, |tag| Message::Dispatch {
            tag,
            class,
            id,
            request,
        });
        match sent {
            Ok(wait) => {
                self.metrics
                    .forwarded_total
                    .set(self.metrics.forwarded_total.get() + 1);
                match wait.await {
                    Reply::Response(response) => response,
                    Reply::Snapshot(_) => {
                        Response::json_error(500, "cross-core reply of the wrong kind")
                    }
                }
            }
            Err(SendError::Full) => {
                let rejected = self.metrics.forward_rejections_total.get() + 1;
                self.metrics.forward_rejections_total.set(rejected);
                Response::json(503, &json!({ "error": "overloaded", "retryable": true }))
                    .with_header("Retry-After", "1")
            }
            Err(SendError::Closed) => {
                Response::json(503, &json!({ "error": "shutting down", "retryable": true }))
                    .with_header("Retry-After", "1")
            }
        }
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

    /// With an auth token configured: whether the request carries it (compared in constant
    /// time, so the answer's timing does not reveal how much of a guess was right).
    fn authorized(&self, request: &Request) -> bool {
        let Some(expected) = &self.auth_header else {
            return true;
        };
        let Some(given) = request.header("authorization") else {
            return false;
        };
        if given.len() != expected.len() {
            return false;
        }
        given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}
