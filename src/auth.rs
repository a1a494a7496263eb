//! Who may do what: the bearer tokens a server takes and what each one grants.
//!
//! A token grants a set of classes (or every class) and four permissions: `write` (its
//! requests' events may commit writes), `websocket` (open WebSockets), `metrics` (read
//! `/metrics`) and `admin` (the admin API and backups). The tokens come from three places:
//! `auth_token` (everything), `admin_token` (the admin API only) and the token file
//! (`[auth] tokens_file`), which `stead token add|list|revoke` edits and the server reads
//! again on SIGHUP. With no token anywhere, every route but the admin API is open.
//!
//! Only a token's SHA-256 is kept, in the file and in memory. A request's token is hashed and
//! compared with every known hash in constant time (no early exit, no map lookup), so the
//! answer's timing says nothing about which bytes of a guess were right.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Tokens one file may hold.
pub const TOKENS_MAX: usize = 10_000;

/// The largest token file read.
const TOKEN_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// The longest token name.
const TOKEN_NAME_BYTES_MAX: usize = 64;

/// Random bytes in a token `stead token add` makes (printed as 64 hex digits).
const TOKEN_SECRET_BYTES: usize = 32;

/// The class list that reaches every class.
pub const EVERY_CLASS: &str = "*";

/// What one token may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Its name, for logs and errors (never the secret).
    pub name: String,
    /// The classes it reaches; `None`: every class.
    classes: Option<BTreeSet<String>>,
    pub write: bool,
    pub websocket: bool,
    pub metrics: bool,
    pub admin: bool,
}

impl Grant {
    /// A grant of everything (`auth_token`).
    fn everything(name: &str) -> Grant {
        Grant {
            name: name.to_string(),
            classes: None,
            write: true,
            websocket: true,
            metrics: true,
            admin: true,
        }
    }

    /// Whether requests with this grant may reach objects of `class`.
    pub fn reaches(&self, class: &str) -> bool {
        self.classes
            .as_ref()
            .is_none_or(|classes| classes.contains(class))
    }
}

/// What a request's `Authorization` header is worth.
#[derive(Clone, Debug)]
pub enum Access {
    /// The server checks no token (none is configured): every route but the admin API is open.
    Open,
    /// A known token's grant.
    Granted(Arc<Grant>),
    /// No token, or one the server does not know.
    Refused,
}

impl Access {
    /// Whether this access may use `permission` (`Open` may use all but the admin API, which
    /// needs a token).
    pub fn allows(&self, permission: Permission) -> bool {
        match self {
            Access::Open => permission != Permission::Admin,
            Access::Granted(grant) => match permission {
                Permission::Write => grant.write,
                Permission::WebSocket => grant.websocket,
                Permission::Metrics => grant.metrics,
                Permission::Admin => grant.admin,
            },
            Access::Refused => false,
        }
    }

    /// Whether this access may reach objects of `class`.
    pub fn reaches(&self, class: &str) -> bool {
        match self {
            Access::Open => true,
            Access::Granted(grant) => grant.reaches(class),
            Access::Refused => false,
        }
    }

    /// The token's name, if a token was given and known.
    pub fn name(&self) -> Option<&str> {
        match self {
            Access::Granted(grant) => Some(&grant.name),
            _ => None,
        }
    }
}

/// The permissions a token file grants one by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    Write,
    WebSocket,
    Metrics,
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Write => "write",
            Permission::WebSocket => "websocket",
            Permission::Metrics => "metrics",
            Permission::Admin => "admin",
        }
    }
}

/// Why the tokens could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthError {
    /// The token file could not be read or written.
    Io { path: PathBuf, reason: String },
    /// The token file is not a valid token file.
    Invalid { path: PathBuf, reason: String },
    /// A `stead token` command that cannot be done (a name taken or unknown).
    Refused(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Io { path, reason } => {
                write!(f, "token file {}: {reason}", path.display())
            }
            AuthError::Invalid { path, reason } => {
                write!(f, "token file {} is invalid: {reason}", path.display())
            }
            AuthError::Refused(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for AuthError {}

/// One token of the file, as stored.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    /// The token's SHA-256, 64 lowercase hex digits.
    pub sha256: String,
    /// Class names, or `["*"]` for every class.
    pub classes: Vec<String>,
    #[serde(default)]
    pub write: bool,
    #[serde(default)]
    pub websocket: bool,
    #[serde(default)]
    pub metrics: bool,
    #[serde(default)]
    pub admin: bool,
}

/// The token file: `[[tokens]]` tables.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
}

impl TokenFile {
    /// Reads and checks the file at `path`.
    pub fn read(path: &Path) -> Result<TokenFile, AuthError> {
        let invalid = |reason: String| AuthError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let bytes =
            crate::config::read_operator_file(path, TOKEN_FILE_BYTES_MAX).map_err(|reason| {
                AuthError::Io {
                    path: path.to_path_buf(),
                    reason,
                }
            })?;
        let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8".to_string()))?;
        let file: TokenFile = toml::from_str(&text).map_err(|error| invalid(error.to_string()))?;
        file.check().map_err(invalid)?;
        Ok(file)
    }

    /// Reads the file at `path`, or an empty one if there is none (for `stead token add`).
    pub fn read_or_empty(path: &Path) -> Result<TokenFile, AuthError> {
        match std::fs::metadata(path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
            _ => TokenFile::read(path),
        }
    }

    /// Writes the file at `path` atomically: a new temporary file (created exclusively,
    /// readable by its owner only, or with the mode and owner of the file it replaces) is
    /// synced and renamed over it.
    pub fn write(&self, path: &Path) -> Result<(), AuthError> {
        use std::io::Write;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
        let io = |error: std::io::Error| AuthError::Io {
            path: path.to_path_buf(),
            reason: error.to_string(),
        };
        let text = toml::to_string(self).map_err(|error| AuthError::Io {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
        let text = format!(
            "# stead's tokens: `stead token add|list|revoke` edit this file; a running server \
             reads it again on SIGHUP.\n# Only each token's SHA-256 is kept.\n\n{text}"
        );
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce)
            .map_err(|error| AuthError::Refused(format!("no randomness: {error}")))?;
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".{}.tmp", hex(&nonce)));
        let temporary = PathBuf::from(temporary);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(io)?;
        let written = (|| {
            if let Ok(old) = std::fs::metadata(path) {
                // The server may run as another user than the one editing the file: keep
                // who may read it. (Only root may give a file away; otherwise it stays ours.)
                let _ = std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid()));
                file.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o7777))?;
            }
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)
        })();
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(io(error));
        }
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(io)
    }

    /// Reads the file at `path` (empty if there is none), changes it with `change` and writes
    /// it back, holding an exclusive lock on `PATH.lock` throughout, so that two edits at once
    /// do not lose one another.
    pub fn update<T>(
        path: &Path,
        change: impl FnOnce(&mut TokenFile) -> Result<T, AuthError>,
    ) -> Result<T, AuthError> {
        use std::os::fd::AsRawFd;
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let io = |error: std::io::Error| AuthError::Io {
            path: PathBuf::from(&lock_path),
            reason: error.to_string(),
        };
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io)?;
        // SAFETY: flock(2) on a descriptor `lock` owns and keeps open; released when it closes.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        let mut file = TokenFile::read_or_empty(path)?;
        let outcome = change(&mut file)?;
        file.write(path)?;
        drop(lock);
        Ok(outcome)
    }

    /// Adds a token named `name` with `grant`'s classes and permissions; returns the token
    /// (the only time it is shown).
    pub fn add(&mut self, mut entry: TokenEntry) -> Result<String, AuthError> {
        if self.tokens.iter().any(|token| token.name == entry.name) {
            return Err(AuthError::Refused(format!(
                "a token named {:?} exists already (revoke it first)",
                entry.name
            )));
        }
        let mut secret = [0u8; TOKEN_SECRET_BYTES];
        getrandom::fill(&mut secret)
            .map_err(|error| AuthError::Refused(format!("no randomness for a token: {error}")))?;
        let token = hex(&secret);
        entry.sha256 = hex(&Sha256::digest(token.as_bytes()));
        self.tokens.push(entry);
        self.check().map_err(AuthError::Refused)?;
        Ok(token)
    }

    /// Removes the token named `name`.
    pub fn revoke(&mut self, name: &str) -> Result<(), AuthError> {
        let before = self.tokens.len();
        self.tokens.retain(|token| token.name != name);
        if self.tokens.len() == before {
            return Err(AuthError::Refused(format!("no token is named {name:?}")));
        }
        Ok(())
    }

    /// Every rule a file must keep: names unique and plain, hashes well-formed, classes given.
    fn check(&self) -> Result<(), String> {
        if self.tokens.len() > TOKENS_MAX {
            return Err(format!(
                "{} tokens, more than the {TOKENS_MAX} allowed",
                self.tokens.len()
            ));
        }
        let mut names = BTreeSet::new();
        let mut hashes = BTreeSet::new();
        for token in &self.tokens {
            let name = &token.name;
            let plain = !name.is_empty()
                && name.len() <= TOKEN_NAME_BYTES_MAX
                && name
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte));
            if !plain {
                return Err(format!(
                    "token name {name:?}: use 1 to {TOKEN_NAME_BYTES_MAX} letters, digits, '-', '_' or '.'"
                ));
            }
            if !names.insert(name.as_str()) {
                return Err(format!("two tokens are named {name:?}"));
            }
            if parse_hash(&token.sha256).is_none() {
                return Err(format!(
                    "token {name:?}: sha256 must be 64 lowercase hex digits"
                ));
            }
            if !hashes.insert(token.sha256.as_str()) {
                return Err(format!("token {name:?} has the same sha256 as another"));
            }
            if token.classes.is_empty() {
                return Err(format!(
                    "token {name:?}: classes is empty (name classes, or \"*\" for every class)"
                ));
            }
        }
        Ok(())
    }
}

/// The tokens a server takes now.
#[derive(Debug, Default)]
pub struct Tokens {
    /// Each token's SHA-256 and grant.
    entries: Vec<([u8; 32], Arc<Grant>)>,
    /// Whether routes other than the admin API are open: no `auth_token` and no token file
    /// (an empty file still closes them: every request but /healthz is refused).
    open: bool,
}

impl Tokens {
    /// The tokens of `auth_token`, `admin_token` and the token file, read now. With `known`,
    /// a file that names a class not in it is invalid (a typo would grant nothing, silently).
    pub fn load(
        auth_token: Option<&str>,
        admin_token: Option<&str>,
        tokens_file: Option<&Path>,
        known: Option<&BTreeSet<String>>,
    ) -> Result<Tokens, AuthError> {
        let mut entries = Vec::new();
        if let Some(token) = auth_token {
            // With an admin token of its own, the admin API takes only that one.
            let mut grant = Grant::everything("auth_token");
            grant.admin = admin_token.is_none();
            entries.push((digest(token), Arc::new(grant)));
        }
        if let Some(token) = admin_token {
            let grant = Grant {
                name: "admin_token".to_string(),
                classes: Some(BTreeSet::new()),
                write: false,
                websocket: false,
                metrics: false,
                admin: true,
            };
            entries.push((digest(token), Arc::new(grant)));
        }
        if let Some(path) = tokens_file {
            let file = TokenFile::read(path)?;
            let unknown = file.tokens.iter().find_map(|token| {
                let class = token.classes.iter().find(|class| {
                    class.as_str() != EVERY_CLASS
                        && known.is_some_and(|known| !known.contains(class.as_str()))
                })?;
                Some(format!(
                    "token {:?} names class {class:?}, which is not registered",
                    token.name
                ))
            });
            if let Some(reason) = unknown {
                return Err(AuthError::Invalid {
                    path: path.to_path_buf(),
                    reason,
                });
            }
            for entry in file.tokens {
                let Some(hash) = parse_hash(&entry.sha256) else {
                    continue; // `read` checked every hash
                };
                let classes = if entry.classes.iter().any(|class| class == EVERY_CLASS) {
                    None
                } else {
                    Some(entry.classes.into_iter().collect())
                };
                let grant = Grant {
                    name: entry.name,
                    classes,
                    write: entry.write,
                    websocket: entry.websocket,
                    metrics: entry.metrics,
                    admin: entry.admin,
                };
                entries.push((hash, Arc::new(grant)));
            }
        }
        let open = auth_token.is_none() && tokens_file.is_none();
        Ok(Tokens { entries, open })
    }

    /// The grant of the token in `authorization` (`Bearer TOKEN`), checked against every
    /// known token in constant time.
    fn grant_of(&self, authorization: Option<&[u8]>) -> Option<Arc<Grant>> {
        let token = authorization?.strip_prefix(b"Bearer ")?;
        let given = Sha256::digest(token);
        let mut found = None;
        for (hash, grant) in &self.entries {
            let diff = hash
                .iter()
                .zip(given.iter())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b));
            if diff == 0 {
                found = Some(grant.clone());
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The server's tokens, shared by its cores and replaced whole on reload.
#[derive(Debug)]
pub struct Auth {
    auth_token: Option<String>,
    admin_token: Option<String>,
    tokens_file: Option<PathBuf>,
    /// The registered classes, which a token file may name.
    known: BTreeSet<String>,
    current: RwLock<Arc<Tokens>>,
    /// Bumped on every reload, so that a core's copy knows it is stale.
    generation: AtomicU64,
}

impl Auth {
    /// Reads the tokens the configuration names; a bad token file stops the start. `known`:
    /// the registered classes.
    pub fn load(
        (auth_token, admin_token): (Option<String>, Option<String>),
        tokens_file: Option<PathBuf>,
        known: BTreeSet<String>,
    ) -> Result<Auth, AuthError> {
        if auth_token.is_some() && auth_token == admin_token {
            return Err(AuthError::Refused(
                "auth_token and admin_token must differ (the admin token may only use the admin \
                 API)"
                    .to_string(),
            ));
        }
        let tokens = Tokens::load(
            auth_token.as_deref(),
            admin_token.as_deref(),
            tokens_file.as_deref(),
            Some(&known),
        )?;
        Ok(Auth {
            auth_token,
            admin_token,
            tokens_file,
            known,
            current: RwLock::new(Arc::new(tokens)),
            generation: AtomicU64::new(0),
        })
    }

    /// Reads the token file again (SIGHUP). A file that cannot be read or is invalid leaves
    /// the tokens as they were. Returns how many tokens the server takes now.
    pub fn reload(&self) -> Result<usize, AuthError> {
        let tokens = Tokens::load(
            self.auth_token.as_deref(),
            self.admin_token.as_deref(),
            self.tokens_file.as_deref(),
            Some(&self.known),
        )?;
        let count = tokens.len();
        match self.current.write() {
            Ok(mut current) => *current = Arc::new(tokens),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(tokens),
        }
        self.generation.fetch_add(1, Ordering::Release);
        Ok(count)
    }

    /// The generation of the tokens now (see [`AuthCache`]).
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn tokens(&self) -> Arc<Tokens> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// One core's copy of the tokens, refreshed when a reload bumped the generation: a request
/// costs one atomic load, not a lock shared by every core.
#[derive(Debug)]
pub struct AuthCache {
    auth: Arc<Auth>,
    copy: std::cell::RefCell<(u64, Arc<Tokens>)>,
}

impl AuthCache {
    pub fn new(auth: Arc<Auth>) -> AuthCache {
        let copy = (auth.generation(), auth.tokens());
        AuthCache {
            auth,
            copy: std::cell::RefCell::new(copy),
        }
    }

    /// What the `Authorization` header `authorization` is worth now on every route but the
    /// admin API: `Open` when the server checks no token there.
    pub fn access(&self, authorization: Option<&[u8]>) -> Access {
        let tokens = self.tokens();
        if tokens.open {
            return Access::Open;
        }
        match tokens.grant_of(authorization) {
            Some(grant) => Access::Granted(grant),
            None => Access::Refused,
        }
    }

    /// What `authorization` is worth on the admin API, which always needs a token (`admin`).
    pub fn admin_access(&self, authorization: Option<&[u8]>) -> Access {
        match self.tokens().grant_of(authorization) {
            Some(grant) => Access::Granted(grant),
            None => Access::Refused,
        }
    }

    /// Whether any token may use the admin API (else it is off: 403, not 401).
    pub fn admin_enabled(&self) -> bool {
        self.tokens().entries.iter().any(|(_, grant)| grant.admin)
    }

    fn tokens(&self) -> Arc<Tokens> {
        let generation = self.auth.generation();
        if self.copy.borrow().0 != generation {
            *self.copy.borrow_mut() = (generation, self.auth.tokens());
        }
        self.copy.borrow().1.clone()
    }
}

/// The SHA-256 of `token`.
fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// 64 lowercase hex digits as 32 bytes.
fn parse_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (index, pair) in text.as_bytes().chunks(2).enumerate() {
        let digit = |byte: u8| match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            _ => None,
        };
        hash[index] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(hash)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, classes: &[&str]) -> TokenEntry {
        TokenEntry {
            name: name.to_string(),
            sha256: String::new(),
            classes: classes.iter().map(|class| class.to_string()).collect(),
            write: true,
            websocket: false,
            metrics: false,
            admin: false,
        }
    }

    #[test]
    fn a_file_round_trips_and_its_tokens_grant_what_it_says() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens.toml");
        let mut file = TokenFile::default();
        let counter = file.add(entry("counters", &["counter"])).expect("add");
        let every = file.add(entry("every", &["*"])).expect("add");
        assert_eq!(counter.len(), 64);
        file.write(&path).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains(&counter), "the secret itself is not stored");
        let tokens = Tokens::load(None, None, Some(&path), None).expect("load");
        let known = ["lock".to_string()].into_iter().collect();
        let error = Tokens::load(None, None, Some(&path), Some(&known)).expect_err("unknown");
        assert!(
            error
                .to_string()
                .contains("\"counter\", which is not registered"),
            "{error}"
        );
        let header = |token: &str| format!("Bearer {token}").into_bytes();
        let grant = tokens
            .grant_of(Some(&header(&counter)))
            .expect("known token");
        assert_eq!(grant.name, "counters");
        assert!(grant.reaches("counter") && !grant.reaches("lock"));
        let grant = tokens.grant_of(Some(&header(&every))).expect("known token");
        assert!(grant.reaches("lock"));
        assert!(tokens.grant_of(Some(&header("nope"))).is_none());
        assert!(tokens.grant_of(Some(counter.as_bytes())).is_none());
        assert!(tokens.grant_of(None).is_none());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens.toml");
        let cases = [
            (
                "[[tokens]]\nname = \"a\"\nsha256 = \"00\"\nclasses = [\"*\"]\n",
                "sha256",
            ),
            (
                "[[tokens]]\nname = \"a b\"\nsha256 = \"\"\nclasses = [\"*\"]\n",
                "token name",
            ),
            (
                &format!(
                    "[[tokens]]\nname = \"a\"\nsha256 = \"{}\"\nclasses = []\n",
                    "0".repeat(64)
                ),
                "classes is empty",
            ),
            ("[[tokens]]\nname = \"a\"\nwrite = \"yes\"\n", "invalid"),
            ("tokens = 3", "invalid"),
        ];
        for (text, expected) in cases {
            std::fs::write(&path, text).expect("write");
            let error = TokenFile::read(&path).expect_err(text).to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn names_are_unique_and_revoking_an_unknown_name_is_an_error() {
        let mut file = TokenFile::default();
        file.add(entry("a", &["*"])).expect("add");
        assert!(file.add(entry("a", &["*"])).is_err());
        assert!(file.revoke("b").is_err());
        file.revoke("a").expect("revoke");
        assert!(file.tokens.is_empty());
    }

    #[test]
    fn without_tokens_every_route_but_admin_is_open() {
        let auth = Auth::load((None, Some("secret".to_string())), None, BTreeSet::new());
        let auth = Arc::new(auth.expect("load"));
        let cache = AuthCache::new(auth);
        let access = cache.access(None);
        assert!(matches!(access, Access::Open));
        assert!(access.allows(Permission::Write) && !access.allows(Permission::Admin));
        assert!(!cache.admin_access(None).allows(Permission::Admin));
        let admin = cache.admin_access(Some(b"Bearer secret"));
        assert!(admin.allows(Permission::Admin) && !admin.reaches("counter"));
    }
}
