//! `dedup`: the design's deduplication pattern. Concurrent identical requests share one
//! upstream fetch.
//!
//! `GET /fetch?url=U` fetches `U` (through `ObjectContext::fetch`, so only hosts in
//! `[fetch] allow_hosts`) once for every request for `U` that arrives while that fetch is in
//! flight, and answers each of them with the upstream's status, `Content-Type` and body; a
//! failed fetch answers each of them with the same error (502, 504 for a timeout). The next
//! request after the fetch ended fetches again: nothing is cached. The fetch runs as a task of
//! its own, so a waiter that goes away does not cancel it for the others. The object stores
//! nothing. Any other path is 404 `Not Found`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::http::{Request, Response};
use crate::object::{DurableObject, FetchRequest, ObjectContext, ObjectError};
use crate::wake::Broadcast;

/// URLs one object fetches at once at most; a request for another URL past it answers 503.
const URLS_IN_FLIGHT_MAX: usize = 1024;

/// One fetch in flight and its outcome, once it has one.
struct Shared {
    outcome: RefCell<Option<Result<Response, ObjectError>>>,
    done: Broadcast,
}

pub struct Dedup {
    context: ObjectContext,
    /// The fetches in flight, by URL.
    in_flight: Rc<RefCell<HashMap<String, Rc<Shared>>>>,
}

impl Dedup {
    /// The fetch of `url` in flight, starting it if there is none.
    fn shared(&self, url: String) -> Result<Rc<Shared>, Response> {
        if let Some(shared) = self.in_flight.borrow().get(&url) {
            return Ok(shared.clone());
        }
        if self.in_flight.borrow().len() >= URLS_IN_FLIGHT_MAX {
            return Err(crate::object::overloaded());
        }
        let shared = Rc::new(Shared {
            outcome: RefCell::new(None),
            done: Broadcast::new(),
        });
        self.in_flight
            .borrow_mut()
            .insert(url.clone(), shared.clone());
        let (context, in_flight, task) =
            (self.context.clone(), self.in_flight.clone(), shared.clone());
        glommio::spawn_local(async move {
            let outcome = context
                .fetch(FetchRequest::get(url.clone()))
                .await
                .map_err(ObjectError::from);
            in_flight.borrow_mut().remove(&url);
            *task.outcome.borrow_mut() = Some(outcome);
            task.done.set();
        })
        .detach();
        Ok(shared)
    }
}

impl DurableObject for Dedup {
    fn new(context: ObjectContext) -> Dedup {
        Dedup {
            context,
            in_flight: Rc::default(),
        }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        if request.path != "/fetch" {
            return Ok(Response::not_found());
        }
        let Some(url) = request.query_param("url").filter(|url| !url.is_empty()) else {
            return Ok(Response::json_error(400, "url is required"));
        };
        let shared = match self.shared(url) {
            Ok(shared) => shared,
            Err(response) => return Ok(response),
        };
        shared.done.wait().await;
        let outcome = shared.outcome.borrow();
        match outcome.as_ref() {
            Some(Ok(upstream)) => {
                let mut response = Response::new(upstream.status, upstream.body.clone());
                let content_type = upstream
                    .headers
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case("content-type"));
                if let Some((_, value)) = content_type {
                    response = response.with_header("Content-Type", value);
                }
                Ok(response)
            }
            Some(Err(error)) => Err(error.clone()),
            None => Err(ObjectError::new(
                "the shared fetch ended without an outcome",
            )),
        }
    }
}
