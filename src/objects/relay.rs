//! `relay`: a call between objects on demand, for measuring them (`stead bench --scenario
//! call`). Not one of the design's objects.
//!
//! `GET /counter/{path}?core=other|same` calls the `counter` named `{id}.{k}` (`id` the relay's
//! id in hex) with
//! `GET /{path}`, where `k` is the smallest number below `CANDIDATES_MAX` whose object lives on
//! another core than this relay (`core=other`, the default) or on the same core (`core=same`),
//! and answers what the counter answered, with `Stead-Callee-Core: other|same` saying where it
//! ran (with one core, always `same`). `times=N` (1 to `TIMES_MAX`, default 1) makes the same
//! call N times one after another in the one event, stopping at the first answer that is not
//! 2xx, and answers the last answer, so that the cost of one call can be told apart from a
//! request's. The relay stores nothing. A call the server refuses is
//! passed on as its status (503 retryable when the callee's core is overloaded). Any other path
//! is 404 `Not Found`.

use crate::http::{Method, Request, Response};
use crate::object::{DurableObject, ObjectContext, ObjectError, ObjectStub};

/// Callee names tried for the wanted core; with two cores, none of 64 names missing the other
/// core has probability 2⁻⁶⁴.
const CANDIDATES_MAX: u32 = 64;

/// Most calls one request may ask for.
const TIMES_MAX: u64 = 1_000;

/// The header saying on which core, relative to the relay, the callee ran.
pub const CALLEE_CORE_HEADER: &str = "Stead-Callee-Core";

pub struct Relay {
    context: ObjectContext,
}

impl Relay {
    /// The counter to call: the first candidate on the wanted core, else the last one tried.
    fn callee(&self, other_core: bool) -> Result<(ObjectStub, bool), ObjectError> {
        let own = self.context.id().to_string();
        let mut found = None;
        for k in 0..CANDIDATES_MAX {
            let stub = self.context.object("counter", &format!("{own}.{k}"))?;
            let local = stub.is_on_this_core().unwrap_or(true);
            let wanted = local != other_core;
            found = Some((stub, local));
            if wanted {
                break;
            }
        }
        found.ok_or_else(|| ObjectError::new("no callee candidate"))
    }
}

impl DurableObject for Relay {
    fn new(context: ObjectContext) -> Relay {
        Relay { context }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        let Some(path) = request.path.strip_prefix("/counter/") else {
            return Ok(Response::not_found());
        };
        let other_core = match request.query_param("core").as_deref() {
            None | Some("other") => true,
            Some("same") => false,
            Some(other) => {
                return Ok(Response::json_error(
                    400,
                    &format!("core must be other or same, got {other:?}"),
                ))
            }
        };
        let times = match super::positive_param(&request, "times", 1) {
            Ok(times) if times <= TIMES_MAX => times,
            Ok(_) => {
                return Ok(Response::json_error(
                    400,
                    &format!("times must be at most {TIMES_MAX}"),
                ))
            }
            Err(response) => return Ok(response),
        };
        let (stub, local) = self.callee(other_core)?;
        let mut answer = None;
        for _ in 0..times {
            let call = Request {
                method: Method::Get,
                path: format!("/{path}"),
                query: String::new(),
                headers: Vec::new(),
                body: Vec::new(),
                upgrade: None,
            };
            let response = stub.fetch(call).await?;
            let failed = !(200..300).contains(&response.status);
            answer = Some(response);
            if failed {
                break;
            }
        }
        let answer = answer.ok_or_else(|| ObjectError::new("no call was made"))?;
        let core = if local { "same" } else { "other" };
        Ok(answer.with_header(CALLEE_CORE_HEADER, core))
    }
}
