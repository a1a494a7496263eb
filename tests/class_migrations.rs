//! Class migrations (`[[migrations]]`), through embedded servers on real sockets and through
//! the `stead` binary: a renamed class keeps its objects by name and by id (also along a
//! chain of renames), objects of a class that is neither registered nor deleted make the start
//! fail with a message naming their tag (and leave them intact), a deleted class's objects are
//! gone durably before the server serves, and migrations that do not fit the registered
//! classes are refused.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, TestServer};
use stead::config::{ClassRename, Migration};
use stead::id::ClassTag;
use stead::object::MigrationError;
use stead::{
    Config, DurableObject, Method, ObjectContext, ObjectError, Request, Response, RunningServer,
    ServerError,
};

/// How long the binary may take to refuse a start.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

/// A note per object: `PUT /` stores the body, `GET /` reads it, `GET /id` answers the object's
/// id, `PUT /alarm` sets an alarm an hour away (and stores nothing).
struct Note {
    /// The object's id and storage.
    context: ObjectContext,
}

impl DurableObject for Note {
    fn new(context: ObjectContext) -> Note {
        Note { context }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        let storage = self.context.storage();
        match (request.method, request.path.as_str()) {
            (Method::Get, "/id") => Ok(Response::text(200, self.context.id().to_string())),
            (Method::Put, "/alarm") => {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_millis() as i64);
                storage.set_alarm(now_ms + 3_600_000)?;
                Ok(Response::text(200, "alarm set"))
            }
            (Method::Put, "/") => {
                storage.put(b"note", request.body)?;
                Ok(Response::text(200, "stored"))
            }
            (Method::Get, "/") => Ok(match storage.get(b"note") {
                Some(note) => Response::new(200, note),
                None => Response::not_found(),
            }),
            _ => Ok(Response::not_found()),
        }
    }
}

/// Starts an embedded server on two cores with `Note` under each of `classes`.
/// The admin API's token of the embedded servers.
const ADMIN_TOKEN: &str = "admin";

fn start(
    dir: &Path,
    classes: &[&str],
    migrations: Vec<Migration>,
) -> Result<RunningServer, ServerError> {
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: dir.to_path_buf(),
        cores: 2,
        migrations,
        admin_token: Some(ADMIN_TOKEN.to_string()),
        ..Config::default()
    };
    let mut builder = stead::Server::builder().config(config);
    for class in classes {
        builder = builder.class::<Note>(class);
    }
    builder.build().start()
}

fn stop(server: RunningServer) {
    server.stop();
    server.wait().expect("clean shutdown");
}

/// The error of a start that must fail; stops the server if it started after all.
fn refused(started: Result<RunningServer, ServerError>) -> ServerError {
    match started {
        Ok(server) => {
            stop(server);
            panic!("the server started");
        }
        Err(error) => error,
    }
}

fn rename(tag: &str, from: &str, to: &str) -> Migration {
    Migration {
        tag: tag.to_string(),
        new_classes: Vec::new(),
        renamed_classes: vec![ClassRename {
            from: from.to_string(),
            to: to.to_string(),
        }],
        deleted_classes: Vec::new(),
    }
}

fn delete(tag: &str, class: &str) -> Migration {
    Migration {
        tag: tag.to_string(),
        new_classes: Vec::new(),
        renamed_classes: Vec::new(),
        deleted_classes: vec![class.to_string()],
    }
}

/// Enough names that both cores own some.
const NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

/// Writes a note into every object of `NAMES` in `class`, and one into a unique id; returns
/// the ids (named ones first, in order of `NAMES`, then the unique one).
fn write_notes(client: &mut Client, class: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for name in NAMES {
        let reply = client.request("PUT", &format!("/objects/{class}/{name}/"), name.as_bytes());
        assert_eq!(reply.status, 200, "{}", reply.text());
        ids.push(client.get(&format!("/objects/{class}/{name}/id")).text());
    }
    let reply = client.request("POST", &format!("/ids/{class}"), b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let unique = reply.json()["id"].as_str().expect("an id").to_string();
    let reply = client.request("PUT", &format!("/objects/{class}/id:{unique}/"), b"unique");
    assert_eq!(reply.status, 200, "{}", reply.text());
    ids.push(unique);
    ids
}

/// Reads back what `write_notes` wrote, under `class`, by name and by id.
fn read_notes(client: &mut Client, class: &str, ids: &[String]) {
    for (name, id) in NAMES.iter().zip(ids) {
        let by_name = client.get(&format!("/objects/{class}/{name}/"));
        assert_eq!((by_name.status, by_name.text()), (200, name.to_string()));
        let by_id = client.get(&format!("/objects/{class}/id:{id}/"));
        assert_eq!((by_id.status, by_id.text()), (200, name.to_string()));
        assert_eq!(
            client.get(&format!("/objects/{class}/{name}/id")).text(),
            *id
        );
    }
    let unique = ids.last().expect("the unique id");
    let by_id = client.get(&format!("/objects/{class}/id:{unique}/"));
    assert_eq!((by_id.status, by_id.text()), (200, "unique".to_string()));
}

#[test]
fn a_renamed_class_keeps_its_objects_by_name_and_by_id_along_a_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &["old"], Vec::new()).expect("start with old");
    let ids = write_notes(&mut Client::connect(server.local_addr()), "old");
    stop(server);

    let server = start(dir.path(), &["new"], vec![rename("v1", "old", "new")]).expect("rename");
    let mut client = Client::connect(server.local_addr());
    read_notes(&mut client, "new", &ids);
    // The old name is gone; new unique ids carry the old tag, so they survive the next rename.
    assert_eq!(client.get("/objects/old/a/").status, 404);
    let fresh = client.request("POST", "/ids/new", b"").json()["id"]
        .as_str()
        .expect("an id")
        .to_string();
    assert_eq!(fresh[..16], ids[0][..16]);
    let reply = client.request("PUT", &format!("/objects/new/id:{fresh}/"), b"fresh");
    assert_eq!(reply.status, 200, "{}", reply.text());
    drop(client);
    stop(server);

    let chain = vec![rename("v1", "old", "new"), rename("v2", "new", "newer")];
    let server = start(dir.path(), &["newer"], chain).expect("rename again");
    let mut client = Client::connect(server.local_addr());
    read_notes(&mut client, "newer", &ids);
    let by_id = client.get(&format!("/objects/newer/id:{fresh}/"));
    assert_eq!((by_id.status, by_id.text()), (200, "fresh".to_string()));
    // The admin API lists the renamed class's objects under its new name.
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let listed = client.request_with(
        "GET",
        "/admin/objects/newer?limit=1000",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(listed.status, 200, "{}", listed.text());
    let objects = listed.json()["objects"].as_array().map_or(0, Vec::len);
    assert_eq!(objects, ids.len() + 1, "{}", listed.text());
    let one = client.request_with(
        "GET",
        &format!("/admin/objects/newer/{}", NAMES[0]),
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(one.json()["name"], NAMES[0], "{}", one.text());
    drop(client);
    stop(server);
}

#[test]
fn objects_of_an_unregistered_class_refuse_the_start_and_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &["old", "other"], Vec::new()).expect("start");
    let ids = write_notes(&mut Client::connect(server.local_addr()), "old");
    stop(server);

    let error = refused(start(dir.path(), &["other"], Vec::new()));
    let ServerError::UnknownClasses(unknown) = &error else {
        panic!("expected unknown classes, got {error}");
    };
    assert_eq!(unknown.len(), 1, "{error}");
    assert_eq!(unknown[0].tag, ClassTag::of("old"));
    assert_eq!(unknown[0].objects, ids.len() as u64);
    let message = error.to_string();
    let tag = ClassTag::of("old").to_string();
    assert!(
        message.contains(&format!("objects of an unregistered class with tag {tag}")),
        "{message}"
    );
    assert!(
        message.contains("register the class or add a migration that deletes it"),
        "{message}"
    );
    // Renaming some other class does not explain the objects either; the message then names
    // the tags the migrations know.
    let error = refused(start(
        dir.path(),
        &["other2"],
        vec![rename("v1", "other", "other2")],
    ));
    assert!(error.to_string().contains(&tag), "{error}");

    // Nothing was changed by the refused starts.
    let server = start(dir.path(), &["old", "other"], Vec::new()).expect("start with old");
    read_notes(&mut Client::connect(server.local_addr()), "old", &ids);
    stop(server);
}

#[test]
fn a_deleted_class_is_removed_durably_before_the_server_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &["old", "keep"], Vec::new()).expect("start");
    let mut client = Client::connect(server.local_addr());
    let kept = write_notes(&mut client, "keep");
    write_notes(&mut client, "old");
    // An object with an alarm and no keys is an object too.
    let reply = client.request("PUT", "/objects/old/alarmed/alarm", b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    drop(client);
    stop(server);

    let server = start(dir.path(), &["keep"], vec![delete("v1", "old")]).expect("delete old");
    let mut client = Client::connect(server.local_addr());
    read_notes(&mut client, "keep", &kept);
    // One key per object, and the name key of each object written by name.
    assert_eq!(
        storage_keys(&mut client),
        (kept.len() + NAMES.len()) as f64,
        "only the kept class's keys are left"
    );
    drop(client);
    stop(server);

    // Without the migration the server starts: the deleted objects are gone from disk.
    let server = start(dir.path(), &["keep"], Vec::new()).expect("start without migration");
    read_notes(&mut Client::connect(server.local_addr()), "keep", &kept);
    stop(server);
}

/// `stead_storage_keys` of `/metrics`, summed over the cores.
fn storage_keys(client: &mut Client) -> f64 {
    let text = client.get("/metrics").text();
    text.lines()
        .filter(|line| line.starts_with("stead_storage_keys{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn migrations_that_do_not_fit_the_classes_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        // A rename to a class that is not registered.
        (
            vec!["old"],
            vec![rename("v1", "old", "new")],
            "no class \"new\" is registered",
        ),
        // A rename whose old name is still registered next to the new one.
        (
            vec!["old", "new"],
            vec![rename("v1", "old", "new")],
            "class \"old\" is registered, but migration \"v1\" renames it to \"new\"",
        ),
        // A deletion of a registered class.
        (
            vec!["old"],
            vec![delete("v1", "old")],
            "class \"old\" is registered, but migration \"v1\" deletes it",
        ),
    ];
    for (classes, migrations, expected) in cases {
        let error = refused(start(dir.path(), &classes, migrations));
        assert!(
            matches!(
                error,
                ServerError::Migration(MigrationError::NotRegistered { .. })
            ) || matches!(
                error,
                ServerError::Migration(MigrationError::StillRegistered { .. })
            ),
            "{error}"
        );
        assert!(error.to_string().contains(expected), "{error}");
    }
    // Nothing was created for a refused configuration.
    assert!(!dir.path().join("LAYOUT").exists());
}

/// Runs `stead serve` on `dir` and waits for it to exit; the exit code and what it wrote on
/// stderr. Fails the test if it is still running after `REFUSAL_TIMEOUT`.
fn serve_until_exit(dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stead"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "2",
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stead serve");
    let deadline = Instant::now() + REFUSAL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stead serve did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        pipe.read_to_string(&mut stderr).expect("read stderr");
    }
    (status.code(), stderr)
}

#[test]
fn stead_serve_refuses_a_data_dir_with_objects_of_a_user_class() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &["notes"], Vec::new()).expect("start");
    write_notes(&mut Client::connect(server.local_addr()), "notes");
    stop(server);

    // The binary registers only the built-in classes.
    let (code, stderr) = serve_until_exit(dir.path(), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    let tag = ClassTag::of("notes").to_string();
    assert!(
        stderr.contains(&format!(
            "{} objects of an unregistered class with tag {tag}",
            NAMES.len() + 1
        )),
        "{stderr}"
    );

    // A deletion in stead.toml lets it start; the objects are then gone for good.
    let config_dir = tempfile::tempdir().expect("tempdir");
    let config = config_dir.path().join("stead.toml");
    std::fs::write(
        &config,
        "[[migrations]]\ntag = \"v1\"\ndeleted_classes = [\"notes\"]\n",
    )
    .expect("write stead.toml");
    let config = config.to_str().expect("a UTF-8 path");
    let server = TestServer::start(dir.path(), 2, &["--config", config]);
    let reply = server
        .client()
        .request("POST", "/objects/counter/c/increment", b"");
    assert_eq!((reply.status, reply.text()), (200, "1".to_string()));
    assert_eq!(server.stop(), Some(0));
    let server = TestServer::start(dir.path(), 2, &[]);
    assert_eq!(
        server.metric_sum("stead_storage_keys"),
        2.0,
        "only the counter: its value and its name"
    );
    assert_eq!(server.stop(), Some(0));
}
