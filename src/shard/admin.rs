//! The operator's API, `/admin/…`, JSON in and out:
//!
//! - `GET /admin/classes`: every registered class with its stored objects, in all and per
//!   core, and the objects of no registered class.
//! - `GET /admin/objects/{class}?prefix=&limit=&cursor=`: the class's objects in id order,
//!   `limit` (1..=1000, default 100) at a time; `cursor` is the last id of the page before;
//!   `prefix` keeps the objects whose stored name starts with it.
//! - `GET /admin/objects/{class}/{name|id:hex}`: one object.
//! - `GET /admin/objects/{class}/{name|id:hex}/storage?prefix=&limit=&cursor=`: its key-value
//!   pairs in key order (text as `key`/`value`, other bytes as `keyBase64`/`valueBase64`;
//!   `cursor` is the hex of the last key of the page before) and its SQL tables.
//! - `DELETE /admin/objects/{class}/{name|id:hex}`: deletes the object (see
//!   `ObjectHost::admin_delete`).
//! - `GET /admin/objects/{class}/{name|id:hex}/bookmark[?at=MS]`: a bookmark of the object's
//!   state now, or at `at` (milliseconds since the Unix epoch), for point-in-time recovery.
//! - `POST /admin/objects/{class}/{name|id:hex}/restore` with `{"bookmark": "…"}`: puts the
//!   object back as it was at the bookmark (see `ObjectHost::admin_restore`).
//!
//! It needs `Authorization: Bearer <admin token>` (or the auth token when no admin token is
//! set); with neither token configured it is off and answers 403. Questions about every
//! object go to every core over the mesh (`Message::Admin`); those about one object go to its
//! owning core only.

use crate::object::error_answer;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Serialize;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use stead_storage::Snapshot;

use super::handler::{
    authorization, forbidden, misdirected, object_id, unauthorized, write_and_close,
};
use super::mesh::{Message, Reply, SendError};
use super::Shard;
use crate::auth::{Access, Permission};
use crate::backup;
use crate::http::{is_class_name, object_target, Method, Request, Response};
use crate::id::{ClassTag, ObjectId};
use crate::object::{overloaded, AdminHistoryError, Bookmark, ObjectInfo, Restored, StoragePage};

/// Objects or pairs in one page when the request names no `limit`.
const LIMIT_DEFAULT: usize = 100;
/// The largest `limit`.
const LIMIT_MAX: usize = 1000;

/// An operator's question to one core.
#[derive(Debug)]
pub enum AdminOp {
    /// Objects per class (by its tag), in the order given, then those of none.
    Counts {
        tags: Vec<ClassTag>,
    },
    /// A page of a class's objects (`ObjectHost::admin_list`).
    List {
        /// The class's tag (from its id namespace, see migrations).
        tag: ClassTag,
        after: Option<ObjectId>,
        prefix: Option<String>,
        limit: usize,
    },
    Object {
        id: ObjectId,
    },
    Storage {
        id: ObjectId,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: usize,
    },
    Delete {
        id: ObjectId,
    },
    Bookmark {
        class: String,
        id: ObjectId,
        at_ms: Option<u64>,
    },
    Restore {
        class: String,
        id: ObjectId,
        bookmark: Bookmark,
    },
    /// Take a snapshot of your store for a backup; the answer names the session.
    BackupOpen,
    /// The next part of a backup session's records.
    BackupNext {
        session: u64,
    },
    /// Drop a backup session.
    BackupClose {
        session: u64,
    },
}

/// One core's answer to an [`AdminOp`].
#[derive(Debug)]
pub enum AdminReply {
    Counts(Vec<u64>),
    Objects(Result<Vec<ObjectInfo>, String>),
    Object(Result<Option<ObjectInfo>, String>),
    Storage(Result<StoragePage, String>),
    Deleted(Result<bool, String>),
    Bookmark(Result<Bookmark, AdminHistoryError>),
    Restored(Result<Restored, AdminHistoryError>),
    BackupOpened(Result<u64, String>),
    BackupPart(Result<BackupPart, String>),
    BackupClosed,
}

/// Encoded records of a backup session, and once they end the session's core, its objects
/// and entries.
pub type BackupPart = (Vec<u8>, Option<(u64, u64)>);

/// Backups in progress on one core, each a snapshot of its store being read.
#[derive(Default)]
pub(super) struct Backups {
    /// Numbers the sessions.
    next: u64,
    /// The sessions, at most `BACKUPS_OPEN_MAX`.
    open: HashMap<u64, BackupSession>,
}

/// One core's part of one backup.
struct BackupSession {
    snapshot: Snapshot,
    /// Whether the `CORE` record was given.
    started: bool,
    /// Objects and entries given so far, for the `CORE_END` record.
    objects: u64,
    entries: u64,
    /// When a request last read it: a session idle for `BACKUP_IDLE_MAX` is dropped when
    /// another needs its place.
    last_used: Instant,
}

/// Backups one core serves at once; each holds a snapshot (the store's small values copied).
const BACKUPS_OPEN_MAX: usize = 4;
/// A session this long unread gives its place to a new one.
const BACKUP_IDLE_MAX: Duration = Duration::from_secs(60);
/// Records one `BackupNext` gathers before answering (at least one object, however large).
const BACKUP_PART_BYTES: usize = 1024 * 1024;

impl Shard {
    /// Answers `op` from this core's objects.
    pub(super) async fn admin_here(&self, op: AdminOp) -> AdminReply {
        let host = &self.host;
        match op {
            AdminOp::Counts { tags } => AdminReply::Counts(host.admin_counts(&tags)),
            AdminOp::List {
                tag,
                after,
                prefix,
                limit,
            } => AdminReply::Objects(
                host.admin_list(tag, after, prefix.as_deref(), limit)
                    .await
                    .map_err(|error| error.to_string()),
            ),
            AdminOp::Object { id } => {
                AdminReply::Object(host.admin_object(id).await.map_err(|e| e.to_string()))
            }
            AdminOp::Storage {
                id,
                prefix,
                after,
                limit,
            } => AdminReply::Storage(
                host.admin_storage(id, &prefix, after.as_deref(), limit)
                    .await,
            ),
            AdminOp::Delete { id } => AdminReply::Deleted(host.admin_delete(id).await),
            AdminOp::Bookmark { class, id, at_ms } => {
                AdminReply::Bookmark(host.admin_bookmark(&class, id, at_ms).await)
            }
            AdminOp::Restore {
                class,
                id,
                bookmark,
            } => AdminReply::Restored(host.admin_restore(&class, id, bookmark).await),
            AdminOp::BackupOpen => AdminReply::BackupOpened(self.backup_open().await),
            AdminOp::BackupNext { session } => {
                AdminReply::BackupPart(self.backup_next(session).await)
            }
            AdminOp::BackupClose { session } => {
                self.backups.borrow_mut().open.remove(&session);
                AdminReply::BackupClosed
            }
        }
    }

    /// Takes a snapshot of this core's store and waits until all of it is durable.
    async fn backup_open(&self) -> Result<u64, String> {
        let full = || {
            format!(
                "{BACKUPS_OPEN_MAX} backups are already running on core {}",
                self.core
            )
        };
        {
            let mut backups = self.backups.borrow_mut();
            let now = Instant::now();
            backups
                .open
                .retain(|_, session| now.duration_since(session.last_used) < BACKUP_IDLE_MAX);
            if backups.open.len() >= BACKUPS_OPEN_MAX {
                return Err(full());
            }
        }
        let store = self.host.store();
        let snapshot = store.snapshot().map_err(|error| error.to_string())?;
        if snapshot.seq() > 0 {
            store
                .wait_durable(snapshot.seq())
                .await
                .map_err(|error| error.to_string())?;
        }
        let mut backups = self.backups.borrow_mut();
        if backups.open.len() >= BACKUPS_OPEN_MAX {
            return Err(full());
        }
        let session = backups.next;
        backups.next += 1;
        backups.open.insert(
            session,
            BackupSession {
                snapshot,
                started: false,
                objects: 0,
                entries: 0,
                last_used: Instant::now(),
            },
        );
        Ok(session)
    }

    /// The next records of a session (about `BACKUP_PART_BYTES`), and once they end it, the
    /// objects and entries it gave.
    async fn backup_next(&self, id: u64) -> Result<BackupPart, String> {
        // Out of the map while it is read, so no borrow is held across the reads.
        let Some(mut session) = self.backups.borrow_mut().open.remove(&id) else {
            return Err(format!("no backup session {id} on core {}", self.core));
        };
        let core = self.core as u32;
        let mut part = Vec::new();
        if !session.started {
            backup::encode_core(core, session.snapshot.seq(), &mut part);
            session.started = true;
        }
        while part.len() < BACKUP_PART_BYTES {
            match session.snapshot.next_object().await {
                Some(Ok((id, data))) => {
                    backup::encode_object(&id, &data, &mut part);
                    session.objects += 1;
                    session.entries += data.entries.len() as u64;
                }
                Some(Err(error)) => return Err(error.to_string()),
                None => {
                    backup::encode_core_end(core, session.objects, session.entries, &mut part);
                    return Ok((part, Some((session.objects, session.entries))));
                }
            }
        }
        session.last_used = Instant::now();
        self.backups.borrow_mut().open.insert(id, session);
        Ok((part, None))
    }

    /// `GET /admin/backup`: answers on `stream` itself, with every core's records as HTTP
    /// chunks. On a failure after the answer began, the connection closes without the last
    /// chunk, so the client sees a truncated backup (which restore refuses). Returns the
    /// status, for the metrics.
    pub(super) async fn stream_backup(
        self: &Rc<Self>,
        mut stream: TcpStream,
        request: &Request,
    ) -> u16 {
        let refusal = self.admin_refusal(request).or_else(|| {
            // A standby's store is empty, a deposed node's may be stale.
            self.cluster_refusal()
                .map(|reason| error_answer(503, &reason, true))
        });
        if let Some(response) = refusal {
            let status = response.status;
            write_and_close(stream, &response).await;
            return status;
        }
        let mut sessions = Vec::with_capacity(self.cores);
        for core in 0..self.cores {
            let opened = match self.admin_on(core, AdminOp::BackupOpen).await {
                Ok(AdminReply::BackupOpened(Ok(session))) => Ok(session),
                Ok(AdminReply::BackupOpened(Err(error))) => Err(Response::json_error(
                    503,
                    &format!("cannot start the backup: {error}"),
                )),
                Ok(_) => Err(wrong_reply()),
                Err(response) => Err(response),
            };
            match opened {
                Ok(session) => sessions.push((core, session)),
                Err(response) => {
                    self.backup_close(&sessions).await;
                    let status = response.status;
                    write_and_close(stream, &response).await;
                    return status;
                }
            }
        }
        let sent = self.send_backup(&mut stream, &sessions).await;
        self.backup_close(&sessions).await;
        match sent {
            Ok(()) => {
                let _ = stream.shutdown(std::net::Shutdown::Write).await;
                200
            }
            Err(reason) => {
                tracing::warn!(%reason, "a backup stopped before its end");
                500
            }
        }
    }

    /// Writes the answer's head, the header, every session's records and the end record.
    async fn send_backup(
        self: &Rc<Self>,
        stream: &mut TcpStream,
        sessions: &[(usize, u64)],
    ) -> Result<(), String> {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                    Content-Disposition: attachment; filename=\"stead.backup\"\r\n\
                    Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        let written = |error: std::io::Error| format!("the client went away: {error}");
        stream.write_all(head.as_bytes()).await.map_err(written)?;
        let mut first = Vec::new();
        let header = backup::Header {
            partitions: self.partitions,
            cores: self.cores as u32,
            created_ms: crate::object::now_ms(),
        };
        backup::encode_header(&header, &mut first);
        write_chunk(stream, &first).await.map_err(written)?;
        let (mut objects, mut entries) = (0u64, 0u64);
        for &(core, session) in sessions {
            loop {
                let part = match self.admin_on(core, AdminOp::BackupNext { session }).await {
                    Ok(AdminReply::BackupPart(Ok(part))) => part,
                    Ok(AdminReply::BackupPart(Err(error))) => return Err(error),
                    Ok(_) => return Err("cross-core reply of the wrong kind".to_string()),
                    Err(response) => {
                        return Err(format!("core {core} did not answer ({})", response.status))
                    }
                };
                let (records, end) = part;
                write_chunk(stream, &records).await.map_err(written)?;
                if let Some((core_objects, core_entries)) = end {
                    objects += core_objects;
                    entries += core_entries;
                    break;
                }
            }
        }
        let mut end = Vec::new();
        backup::encode_end(sessions.len() as u32, objects, entries, &mut end);
        write_chunk(stream, &end).await.map_err(written)?;
        stream.write_all(b"0\r\n\r\n").await.map_err(written)?;
        stream.flush().await.map_err(written)
    }

    /// Drops the sessions of a backup that ended (or never began) on every core.
    async fn backup_close(self: &Rc<Self>, sessions: &[(usize, u64)]) {
        for &(core, session) in sessions {
            // A core that cannot answer drops the session when its place is needed.
            let _ = self.admin_on(core, AdminOp::BackupClose { session }).await;
        }
    }

    /// Answers `op` on core `core`, here or over the mesh; `Err` is the response to give.
    async fn admin_on(self: &Rc<Self>, core: usize, op: AdminOp) -> Result<AdminReply, Response> {
        if core == self.core {
            return Ok(self.admin_here(op).await);
        }
        match self.mesh.request(core, |tag| Message::Admin { tag, op }) {
            Ok(wait) => match wait.await {
                Reply::Admin(reply) => Ok(*reply),
                Reply::Response(_) | Reply::Snapshot(_) => Err(Response::json_error(
                    500,
                    "cross-core reply of the wrong kind",
                )),
            },
            Err(SendError::Full) => Err(overloaded()),
            Err(SendError::Closed) => Err(Response::json_error(503, "a core is shutting down")),
        }
    }

    /// Answers `op`, a question about object `id`, on the core that owns it.
    async fn admin_about(
        self: &Rc<Self>,
        id: ObjectId,
        op: AdminOp,
    ) -> Result<AdminReply, Response> {
        self.admin_on(id.core(self.partitions, self.cores), op)
            .await
    }

    /// Why `request` may not use the admin API, if it may not: 403 when no token may (the API
    /// is off) or its token has no `admin` permission, 401 without a known token.
    fn admin_refusal(&self, request: &Request) -> Option<Response> {
        if !self.auth.admin_enabled() {
            return Some(Response::json_error(
                403,
                "the admin API is off: start stead with --admin-token (or --auth-token, or a \
                 token file with an admin token)",
            ));
        }
        let access = self.auth.admin_access(authorization(request));
        match access {
            Access::Refused | Access::Open => Some(unauthorized()),
            Access::Granted(_) if !access.allows(Permission::Admin) => {
                Some(forbidden(&access, "use the admin API"))
            }
            Access::Granted(_) => None,
        }
    }

    /// One request to the admin API; `path` follows `/admin`.
    pub(super) async fn admin(self: &Rc<Self>, request: &Request, path: &str) -> Response {
        if let Some(refused) = self.admin_refusal(request) {
            return refused;
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // A node that does not serve (a standby, one taking over, a deposed one, one without a
        // fresh lease) shows nothing: what it has may be empty or stale, and what it would
        // write would not reach the stream.
        if let Some(reason) = self.cluster_refusal() {
            return error_answer(503, &reason, true);
        }
        let read = matches!(request.method, Method::Get | Method::Head);
        let answer = match segments.as_slice() {
            ["classes"] if read => self.admin_classes().await,
            ["objects", class] if read => self.admin_list(request, class).await,
            ["objects", class, target] if read => self.admin_object(class, target).await,
            ["objects", class, target] if request.method == Method::Delete => {
                self.admin_delete(class, target).await
            }
            ["objects", class, target, "storage"] if read => {
                self.admin_storage(request, class, target).await
            }
            ["objects", class, target, "bookmark"] if read => {
                self.admin_bookmark(request, class, target).await
            }
            ["objects", class, target, "restore"] if request.method == Method::Post => {
                self.admin_restore(request, class, target).await
            }
            ["objects", _, _, "restore"] => Err(method_not_allowed("POST")),
            ["classes"] | ["objects", _] | ["objects", _, _, "storage" | "bookmark"] => {
                Err(method_not_allowed("GET, HEAD"))
            }
            ["objects", _, _] => Err(method_not_allowed("GET, HEAD, DELETE")),
            ["backup"] => Err(method_not_allowed("GET")),
            _ => Err(Response::json_error(404, "no such admin route")),
        };
        answer.unwrap_or_else(|response| response)
    }

    async fn admin_classes(self: &Rc<Self>) -> Result<Response, Response> {
        let classes: Vec<String> = self.registry.names().map(str::to_string).collect();
        let tags: Vec<ClassTag> = classes
            .iter()
            .filter_map(|class| self.registry.tag(class))
            .collect();
        let mut per_core = Vec::with_capacity(self.cores);
        for core in 0..self.cores {
            let op = AdminOp::Counts { tags: tags.clone() };
            match self.admin_on(core, op).await? {
                AdminReply::Counts(counts) => per_core.push(counts),
                _ => return Err(wrong_reply()),
            }
        }
        let count = |index: usize| {
            let per_core: Vec<u64> = per_core
                .iter()
                .map(|counts| counts.get(index).copied().unwrap_or(0))
                .collect();
            Count {
                objects: per_core.iter().sum(),
                per_core,
            }
        };
        let answer = Classes {
            classes: classes
                .iter()
                .enumerate()
                .map(|(index, class)| ClassCount {
                    class: class.clone(),
                    count: count(index),
                })
                .collect(),
            unregistered: count(classes.len()),
        };
        Ok(json(&answer))
    }

    async fn admin_list(
        self: &Rc<Self>,
        request: &Request,
        class: &str,
    ) -> Result<Response, Response> {
        let tag = self.known_class(class)?;
        let namespace = self.registry.id_namespace(class);
        let limit = limit(request)?;
        let after =
            match request
                .query_param("cursor")
                .filter(|text| !text.is_empty())
            {
                Some(text) => Some(ObjectId::from_string(namespace, &text).map_err(|error| {
                    Response::json_error(400, &format!("invalid cursor: {error}"))
                })?),
                None => None,
            };
        let prefix = request
            .query_param("prefix")
            .filter(|text| !text.is_empty());
        let mut objects = Vec::new();
        for core in 0..self.cores {
            let op = AdminOp::List {
                tag,
                after,
                prefix: prefix.clone(),
                limit,
            };
            match self.admin_on(core, op).await? {
                AdminReply::Objects(Ok(found)) => objects.extend(found),
                AdminReply::Objects(Err(error)) => return Err(store_failed(&error)),
                _ => return Err(wrong_reply()),
            }
        }
        objects.sort_by_key(|info| info.id);
        objects.truncate(limit);
        let cursor = match objects.last() {
            Some(last) if objects.len() == limit => Some(last.id.to_string()),
            _ => None,
        };
        let objects = objects.iter().map(ObjectJson::from).collect();
        Ok(json(&Objects { objects, cursor }))
    }

    async fn admin_object(
        self: &Rc<Self>,
        class: &str,
        target: &str,
    ) -> Result<Response, Response> {
        let id = self.admin_target(class, target)?;
        match self.admin_about(id, AdminOp::Object { id }).await? {
            AdminReply::Object(Ok(Some(info))) => Ok(json(&ObjectJson::from(&info))),
            AdminReply::Object(Ok(None)) => Err(Response::json_error(404, "no such object")),
            AdminReply::Object(Err(error)) => Err(store_failed(&error)),
            _ => Err(wrong_reply()),
        }
    }

    async fn admin_storage(
        self: &Rc<Self>,
        request: &Request,
        class: &str,
        target: &str,
    ) -> Result<Response, Response> {
        let id = self.admin_target(class, target)?;
        let limit = limit(request)?;
        let prefix = request.query_param("prefix").unwrap_or_default();
        let after = match request
            .query_param("cursor")
            .filter(|text| !text.is_empty())
        {
            Some(text) => Some(
                from_hex(&text)
                    .ok_or_else(|| Response::json_error(400, "invalid cursor: expected hex"))?,
            ),
            None => None,
        };
        let op = AdminOp::Storage {
            id,
            prefix: prefix.into_bytes(),
            after,
            limit,
        };
        let page = match self.admin_about(id, op).await? {
            AdminReply::Storage(Ok(page)) => page,
            AdminReply::Storage(Err(error)) => return Err(store_failed(&error)),
            _ => return Err(wrong_reply()),
        };
        Ok(json(&StorageJson::from(&page)))
    }

    async fn admin_delete(
        self: &Rc<Self>,
        class: &str,
        target: &str,
    ) -> Result<Response, Response> {
        let id = self.admin_target(class, target)?;
        match self.admin_about(id, AdminOp::Delete { id }).await? {
            AdminReply::Deleted(Ok(deleted)) => Ok(json(&Deleted {
                id: id.to_string(),
                deleted,
            })),
            AdminReply::Deleted(Err(error)) => Err(store_failed(&error)),
            _ => Err(wrong_reply()),
        }
    }

    async fn admin_bookmark(
        self: &Rc<Self>,
        request: &Request,
        class: &str,
        target: &str,
    ) -> Result<Response, Response> {
        let id = self.admin_target(class, target)?;
        let at_ms = match request.query_param("at").filter(|text| !text.is_empty()) {
            Some(text) => Some(text.parse::<u64>().map_err(|_| {
                Response::json_error(
                    400,
                    &format!("at must be milliseconds since the Unix epoch, got {text:?}"),
                )
            })?),
            None => None,
        };
        let op = AdminOp::Bookmark {
            class: class.to_string(),
            id,
            at_ms,
        };
        match self.admin_about(id, op).await? {
            AdminReply::Bookmark(Ok(bookmark)) => Ok(json(&BookmarkJson {
                id: id.to_string(),
                bookmark: bookmark.to_string(),
                time: bookmark.time_ms,
                version: bookmark.version,
            })),
            AdminReply::Bookmark(Err((status, message))) => {
                Err(Response::json_error(status, &message))
            }
            _ => Err(wrong_reply()),
        }
    }

    async fn admin_restore(
        self: &Rc<Self>,
        request: &Request,
        class: &str,
        target: &str,
    ) -> Result<Response, Response> {
        let id = self.admin_target(class, target)?;
        let body: RestoreBody = serde_json::from_slice(&request.body).map_err(|error| {
            Response::json_error(
                400,
                &format!("the body must be {{\"bookmark\": \"…\"}}: {error}"),
            )
        })?;
        let bookmark: Bookmark =
            body.bookmark
                .parse()
                .map_err(|error: crate::object::HistoryError| {
                    Response::json_error(400, &error.to_string())
                })?;
        let op = AdminOp::Restore {
            class: class.to_string(),
            id,
            bookmark,
        };
        match self.admin_about(id, op).await? {
            AdminReply::Restored(Ok(restored)) => Ok(json(&RestoredJson {
                id: id.to_string(),
                restored: restored.bookmark.to_string(),
                undo: restored.undo.to_string(),
            })),
            AdminReply::Restored(Err((status, message))) => {
                Err(Response::json_error(status, &message))
            }
            _ => Err(wrong_reply()),
        }
    }

    /// The tag of the ids of `class`; 404 unless it is registered.
    fn known_class(&self, class: &str) -> Result<ClassTag, Response> {
        self.registry
            .tag(class)
            .filter(|_| is_class_name(class))
            .ok_or_else(|| Response::json_error(404, "no such class"))
    }

    /// The object a path segment names (a percent-encoded name or `id:<hex>`).
    fn admin_target(&self, class: &str, target: &str) -> Result<ObjectId, Response> {
        self.known_class(class)?;
        if target.is_empty() {
            return Err(Response::json_error(404, "no object named"));
        }
        let namespace = self.registry.id_namespace(class);
        let id = object_id(namespace, object_target(target, &self.config.http)?)?;
        // In a cluster, another node's object is shown (and deleted) by that node.
        match self.owner_elsewhere(&id) {
            Some(owner) => Err(misdirected(&owner)),
            None => Ok(id),
        }
    }
}

/// The `limit` query parameter: 1..=`LIMIT_MAX`, `LIMIT_DEFAULT` when absent.
fn limit(request: &Request) -> Result<usize, Response> {
    let Some(text) = request.query_param("limit").filter(|text| !text.is_empty()) else {
        return Ok(LIMIT_DEFAULT);
    };
    match text.parse::<usize>() {
        Ok(limit) if (1..=LIMIT_MAX).contains(&limit) => Ok(limit),
        _ => Err(Response::json_error(
            400,
            &format!("limit must be an integer from 1 to {LIMIT_MAX}, got {text:?}"),
        )),
    }
}

/// A 200 answer of `value` as JSON, fields in declaration order.
fn json(value: &impl Serialize) -> Response {
    Response::json_of(200, value).unwrap_or_else(|error| {
        Response::json_error(500, &format!("cannot encode the answer: {error}"))
    })
}

/// `GET /admin/classes`.
#[derive(Serialize)]
struct Classes {
    classes: Vec<ClassCount>,
    unregistered: Count,
}

#[derive(Serialize)]
struct ClassCount {
    class: String,
    #[serde(flatten)]
    count: Count,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Count {
    objects: u64,
    per_core: Vec<u64>,
}

/// `GET /admin/objects/{class}`.
#[derive(Serialize)]
struct Objects {
    objects: Vec<ObjectJson>,
    cursor: Option<String>,
}

/// One object.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectJson {
    id: String,
    name: Option<String>,
    active: bool,
    keys: u64,
    bytes: u64,
    sql_bytes: u64,
    history_bytes: u64,
    alarm: Option<i64>,
    sockets: usize,
}

impl From<&ObjectInfo> for ObjectJson {
    fn from(info: &ObjectInfo) -> ObjectJson {
        ObjectJson {
            id: info.id.to_string(),
            name: info.name.clone(),
            active: info.active,
            keys: info.keys,
            bytes: info.bytes,
            sql_bytes: info.sql_bytes,
            history_bytes: info.history_bytes,
            alarm: info.alarm_ms,
            sockets: info.sockets,
        }
    }
}

/// `GET /admin/objects/{class}/{target}/bookmark`.
#[derive(Serialize)]
struct BookmarkJson {
    id: String,
    bookmark: String,
    time: u64,
    version: u64,
}

/// The body of `POST /admin/objects/{class}/{target}/restore`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    bookmark: String,
}

/// The answer to a restore.
#[derive(Serialize)]
struct RestoredJson {
    id: String,
    /// The bookmark the object went back to.
    restored: String,
    /// Restoring this bookmark undoes the restore.
    undo: String,
}

/// `GET /admin/objects/{class}/{target}/storage`.
#[derive(Serialize)]
struct StorageJson {
    entries: Vec<EntryJson>,
    cursor: Option<String>,
    tables: Vec<TableJson>,
}

/// One pair: text as `key`/`value`, other bytes as `keyBase64`/`valueBase64`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

#[derive(Serialize)]
struct TableJson {
    name: String,
    rows: Option<i64>,
    sql: String,
}

impl From<&StoragePage> for StorageJson {
    fn from(page: &StoragePage) -> StorageJson {
        let entries = page
            .entries
            .iter()
            .map(|(key, value)| {
                let (key, key_base64) = text_or_base64(key);
                let (value, value_base64) = text_or_base64(value);
                EntryJson {
                    key,
                    key_base64,
                    value,
                    value_base64,
                }
            })
            .collect();
        let tables = page
            .tables
            .iter()
            .map(|table| TableJson {
                name: table.name.clone(),
                rows: table.rows,
                sql: table.sql.clone(),
            })
            .collect();
        StorageJson {
            entries,
            cursor: page.next.as_deref().map(to_hex),
            tables,
        }
    }
}

/// `DELETE /admin/objects/{class}/{target}`.
#[derive(Serialize)]
struct Deleted {
    id: String,
    deleted: bool,
}

/// Bytes as text when they are UTF-8 (first), else as base64 (second).
fn text_or_base64(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_string()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

/// Writes `data` as one HTTP chunk (nothing for empty data, which would end the answer).
async fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    stream
        .write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await?;
    stream.write_all(data).await?;
    stream.write_all(b"\r\n").await
}

fn method_not_allowed(allow: &str) -> Response {
    Response::json_error(405, "method not allowed").with_header("Allow", allow)
}

fn wrong_reply() -> Response {
    Response::json_error(500, "cross-core reply of the wrong kind")
}

fn store_failed(error: &str) -> Response {
    Response::json_error(503, &format!("the store could not answer: {error}"))
}
