//! `counter`: a persisted integer, as in the design's Counter.
//!
//! `/increment` and `/decrement` change it by one and answer the new value as text; `/value`
//! answers it; the value is stored under the key `value`; any other path is 404 `Not Found`.

use crate::http::{Request, Response};
use crate::object::{DurableObject, ObjectContext, ObjectError};

/// The storage key of the value.
const VALUE_KEY: &[u8] = b"value";

pub struct Counter {
    /// Storage and identity of this object.
    context: ObjectContext,
}

impl Counter {
    /// The stored value; 0 when absent. A value this class did not write is an error.
    fn load(&self) -> Result<i64, ObjectError> {
        match self.context.storage().get(VALUE_KEY) {
            None => Ok(0),
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.parse::<i64>().ok())
                .ok_or_else(|| ObjectError::new("stored counter value is not an integer")),
        }
    }

    fn add(&self, delta: i64) -> Result<Response, ObjectError> {
        let value = self
            .load()?
            .checked_add(delta)
            .ok_or_else(|| ObjectError::new("counter overflow"))?;
        self.context.storage().put(VALUE_KEY, value.to_string())?;
        Ok(Response::text(200, value.to_string()))
    }
}

impl DurableObject for Counter {
    fn new(context: ObjectContext) -> Counter {
        Counter { context }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        match request.path.as_str() {
            "/increment" => self.add(1),
            "/decrement" => self.add(-1),
            "/value" => Ok(Response::text(200, self.load()?.to_string())),
            _ => Ok(Response::not_found()),
        }
    }
}
