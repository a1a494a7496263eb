//! Embeds stead as a library with a class of its own: a tiny key-value object.
//!
//! Run it with `cargo run --release --example kv`, then:
//!
//! ```text
//! curl -X PUT --data 'hello' http://127.0.0.1:8090/objects/kv/notes/greeting
//! curl http://127.0.0.1:8090/objects/kv/notes/greeting
//! curl -X DELETE http://127.0.0.1:8090/objects/kv/notes/greeting
//! ```

use stead::{Config, DurableObject, Method, ObjectContext, ObjectError, Request, Response};

/// One object per name; each key of the URL path is a key of the object's storage.
struct KeyValue {
    /// The object's identity and storage.
    context: ObjectContext,
}

impl DurableObject for KeyValue {
    fn new(context: ObjectContext) -> KeyValue {
        KeyValue { context }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        let key = request.path.trim_start_matches('/').as_bytes();
        if key.is_empty() {
            return Ok(Response::text(
                400,
                "a key is needed: /objects/kv/{name}/{key}",
            ));
        }
        let storage = self.context.storage();
        match request.method {
            Method::Get => Ok(match storage.get(key) {
                Some(value) => Response::new(200, value),
                None => Response::not_found(),
            }),
            Method::Put | Method::Post => {
                storage.put(key, request.body)?;
                Ok(Response::text(200, "stored"))
            }
            Method::Delete => Ok(match storage.delete(key)? {
                true => Response::text(200, "deleted"),
                false => Response::not_found(),
            }),
            _ => Ok(Response::text(405, "use GET, PUT or DELETE")),
        }
    }
}

fn main() {
    // STEAD_LISTEN overrides the address, as it does for `stead serve` (tests use port 0).
    let listen = std::env::var("STEAD_LISTEN").unwrap_or_else(|_| "127.0.0.1:8090".into());
    let Ok(listen) = listen.parse() else {
        eprintln!("kv example: STEAD_LISTEN={listen:?} is not an address");
        std::process::exit(2);
    };
    let config = Config {
        listen,
        data_dir: "./kv-data".into(),
        ..Config::default()
    };
    let data_dir = config.data_dir.clone();
    let server = stead::Server::builder()
        .config(config)
        .class::<KeyValue>("kv")
        .build();
    // Announce only once SIGTERM is caught, so a signal right after the line is not lost.
    let announce = |running: &stead::RunningServer| {
        let addr = running.local_addr();
        println!(
            "kv example: listening on {addr} with data in {}",
            data_dir.display()
        );
    };
    let result = server
        .start()
        .and_then(|running| stead::server::wait_for_signal(running, announce));
    if let Err(error) = result {
        eprintln!("kv example: {error}");
        std::process::exit(1);
    }
}
