//! Caller authentication and roles. A caller presents `authorization: Bearer <token>`; tokens
//! are configured as SHA-256 hashes, so the configuration holds nothing that grants access.
//! The gRPC request layer (`grpc::auth::identify`) finds the caller of each request, before
//! the body is decoded, and attaches the [`Caller`] that handlers read with [`caller`].

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use globset::{Glob, GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128 as _, SipHasher24};
use tokio::sync::watch;

use crate::config::CallerConfig;
use crate::profile::{FieldError, validate_name};

/// Profile names whose pattern verdict a consumer remembers; past this many, the glob set is
/// asked again on every call (a caller probing random names cannot grow memory).
const MATCH_CACHE_LIMIT: usize = 1024;
/// Bytes of profile names a consumer remembers, on top of [`MATCH_CACHE_LIMIT`]. Names are
/// validated (at most 63 bytes) before they are matched, so this bounds the cache by itself
/// too should a surface ever match an unvalidated name: 1,024 names of 32 bytes on average.
const MATCH_CACHE_BYTES: usize = 32 * 1024;

/// What a caller may do; read from the configuration (`callers[].role`).
pub use crate::config::Role;

/// The caller may not do what it asked; the message says what it may do. Every surface maps
/// it to its own refusal (gRPC `PERMISSION_DENIED`, HTTP 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Why a caller may not get a profile's tokens ([`Caller::require_token`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenRefused {
    /// Not a profile name at all (gRPC `INVALID_ARGUMENT`, naming `name`). Checked for every
    /// caller before any pattern sees the name: no profile can bear it, so the answer tells
    /// nothing about which profiles exist, and the name is never matched or remembered.
    #[error("invalid {0}")]
    InvalidName(FieldError),
    /// A valid name the caller may not have (gRPC `PERMISSION_DENIED`), whether a profile of
    /// that name exists or not.
    #[error(transparent)]
    Denied(#[from] Denied),
}

/// An authenticated caller.
#[derive(Debug)]
pub struct Caller {
    /// Its configured name, for logs and audit.
    pub name: String,
    /// Its role.
    pub role: Role,
    profiles: GlobSet,
    /// The glob set's verdict per profile name already asked for: a consumer asks for the same
    /// few profiles many times a second, and a lookup is cheaper than matching the set again.
    /// Bounded by [`MATCH_CACHE_LIMIT`]; rebuilt with the caller on reload.
    /// Hashed with foldhash, seeded per process (a caller cannot aim names at one bucket
    /// without the seed, and the bound above caps the damage if it could): it is asked on
    /// every hand-out, and costs a fraction of SipHash.
    matched: DashMap<Box<str>, bool, foldhash::fast::RandomState>,
    /// Entries in `matched` (`DashMap::len` would lock every shard).
    matched_len: AtomicUsize,
    /// Bytes of the names in `matched`, bounded by [`MATCH_CACHE_BYTES`].
    matched_bytes: AtomicUsize,
    /// Its token hand-outs since the audit writer last ran.
    pub handouts: super::audit::HandoutTallies,
}

impl Caller {
    /// Whether this caller may administer profiles.
    pub fn require_admin(&self) -> Result<(), Denied> {
        match self.role {
            Role::Admin => Ok(()),
            _ => Err(Denied(format!("caller {:?} is not an admin", self.name))),
        }
    }

    /// Whether this caller may read the profile table.
    pub fn require_viewer(&self) -> Result<(), Denied> {
        match self.role {
            Role::Admin | Role::Viewer => Ok(()),
            Role::Consumer => Err(Denied(format!("caller {:?} may only fetch tokens", self.name))),
        }
    }

    /// Whether this caller may get tokens of `profile`. The name is validated first, for every
    /// caller ([`TokenRefused::InvalidName`]); then a consumer asking for a name outside its
    /// patterns is refused the same way whether the profile exists or not.
    pub fn require_token(&self, profile: &str) -> Result<(), TokenRefused> {
        validate_name(profile).map_err(TokenRefused::InvalidName)?;
        match self.role {
            Role::Admin => Ok(()),
            Role::Consumer if self.matches(profile) => Ok(()),
            _ => Err(Denied(format!("caller {:?} may not get tokens of {profile:?}", self.name)).into()),
        }
    }

    /// Whether `profile` matches this caller's patterns, remembered per name.
    fn matches(&self, profile: &str) -> bool {
        if let Some(verdict) = self.matched.get(profile) {
            return *verdict;
        }
        let verdict = self.profiles.is_match(profile);
        // Checked, then counted: racing callers may overshoot by a few names, never by more.
        let room = self.matched_len.load(Ordering::Relaxed) < MATCH_CACHE_LIMIT
            && self.matched_bytes.load(Ordering::Relaxed) + profile.len() <= MATCH_CACHE_BYTES;
        if room && self.matched.insert(profile.into(), verdict).is_none() {
            self.matched_len.fetch_add(1, Ordering::Relaxed);
            self.matched_bytes.fetch_add(profile.len(), Ordering::Relaxed);
        }
        verdict
    }
}

/// The hex SHA-256 of a bearer token, as written in the configuration.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The callers, indexed by each way they can prove who they are.
#[derive(Debug, Default)]
struct Table {
    by_hash: HashMap<[u8; 32], Arc<Caller>>,
    by_dns_name: HashMap<String, Arc<Caller>>,
    by_uid: HashMap<u32, Arc<Caller>>,
    /// Bearer tokens this table has already accepted, by their [`TokenKey`]: the hot path's
    /// index (see [`Callers::identify_token`]). Starts empty; holds at most one entry per
    /// configured token hash (only a token whose SHA-256 is configured gets in), and goes with
    /// the table on reload, so no entry outlives the caller it names.
    recognized: ArcSwap<HashMap<u128, Recognized, KeyHasher>>,
}

/// A bearer token already accepted: its caller, and its credential (the SHA-256 the
/// configuration names it by).
#[derive(Debug, Clone)]
struct Recognized {
    caller: Arc<Caller>,
    digest: [u8; 32],
}

/// Hashes a [`TokenKey`], which is already uniformly distributed, by taking its low 64 bits:
/// no second hash over a pseudo-random value.
type KeyHasher = BuildHasherDefault<LowBits>;

/// See [`KeyHasher`].
#[derive(Default)]
struct LowBits(u64);

impl Hasher for LowBits {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }

    /// Not reached for `u128` keys; folds anything else in (FNV-1a) rather than ignore it.
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A keyed 128-bit SipHash-2-4 of a bearer token, under a key drawn at start-up and never
/// shown: the index of tokens already accepted. SipHash is a pseudo-random function, so
/// without the key nobody can find a second token with the same index, nor learn anything
/// about a token from it; and it costs a few hundred instructions where SHA-256 costs a few
/// thousand on a CPU without SHA extensions (the SHA-256 still proves each token once).
#[derive(Clone)]
struct TokenKey {
    key: [u8; 16],
}

impl TokenKey {
    fn random() -> Self {
        Self { key: rand::random() }
    }

    fn of(&self, token: &str) -> u128 {
        let mut hasher = SipHasher24::new_with_key(&self.key);
        hasher.write(token.as_bytes());
        hasher.finish128().as_u128()
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// How a caller proved who it is. Kept by whatever outlives one request (a watch stream, a
/// landing-page session), so the caller can be found again in a reloaded table
/// ([`Callers::resolve`]).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// The SHA-256 of the bearer token presented.
    Token([u8; 32]),
    /// The DNS name (lowercase) of the client certificate that named a caller.
    Certificate(String),
    /// The uid of the process on the other end of the Unix socket.
    Uid(u32),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Which kind only: a token's hash is not a secret, but it has no place in logs either.
        match self {
            Self::Token(_) => f.write_str("Token"),
            Self::Certificate(name) => write!(f, "Certificate({name:?})"),
            Self::Uid(uid) => write!(f, "Uid({uid})"),
        }
    }
}

impl Credential {
    /// The credential of a presented bearer token.
    pub fn of_token(token: &str) -> Self {
        Self::Token(Sha256::digest(token.as_bytes()).into())
    }
}

/// Every configured caller; swapped whole when the configuration is reloaded (SIGHUP).
#[derive(Debug, Clone)]
pub struct Callers {
    table: Arc<ArcSwap<Table>>,
    /// Counts the replacements of `table`: what outlives a request (a watch stream, a session)
    /// waits on it to look its caller up again ([`super::CallerWatch`]).
    generation: Arc<watch::Sender<u64>>,
    /// The key of the accepted-token index; one per process.
    token_key: TokenKey,
}

impl Default for Callers {
    fn default() -> Self {
        Self::new(&[])
    }
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash)
}

fn build(configs: &[CallerConfig]) -> Table {
    let mut table = Table::default();
    for config in configs {
        let role = config.role;
        let mut globs = GlobSetBuilder::new();
        for pattern in &config.profiles {
            if let Ok(glob) = Glob::new(pattern) {
                globs.add(glob);
            }
        }
        let Ok(profiles) = globs.build() else { continue };
        let caller = Arc::new(Caller {
            name: config.name.clone(),
            role,
            profiles,
            matched: DashMap::default(),
            matched_len: AtomicUsize::new(0),
            matched_bytes: AtomicUsize::new(0),
            handouts: Default::default(),
        });
        if let Some(hash) = parse_hash(&config.token_sha256) {
            table.by_hash.insert(hash, Arc::clone(&caller));
        }
        if !config.cert_dns_name.is_empty() {
            table.by_dns_name.insert(config.cert_dns_name.to_ascii_lowercase(), Arc::clone(&caller));
        }
        if let Some(uid) = config.unix_uid {
            table.by_uid.insert(uid, caller);
        }
    }
    table
}

impl Callers {
    /// Builds the table; the configuration was validated already, so bad entries are skipped.
    pub fn new(configs: &[CallerConfig]) -> Self {
        Self {
            table: Arc::new(ArcSwap::from_pointee(build(configs))),
            generation: Default::default(),
            token_key: TokenKey::random(),
        }
    }

    /// Replaces every caller (a reloaded configuration). Requests in progress keep theirs;
    /// streams and sessions that hold a [`super::CallerWatch`] look theirs up again.
    pub fn replace(&self, configs: &[CallerConfig]) {
        self.table.store(Arc::new(build(configs)));
        // After the store: whoever wakes up finds the new table.
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// A receiver that sees every later [`Callers::replace`].
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The caller that `credential` names in the current table, if any.
    pub fn resolve(&self, credential: &Credential) -> Option<Arc<Caller>> {
        let table = self.table.load();
        match credential {
            Credential::Token(hash) => table.by_hash.get(hash).cloned(),
            Credential::Certificate(name) => table.by_dns_name.get(name).cloned(),
            Credential::Uid(uid) => table.by_uid.get(uid).cloned(),
        }
    }

    /// Writes and resets every caller's hand-out tallies (the audit writer runs it every few
    /// seconds, and a reload runs it before the callers are replaced).
    pub fn write_handouts(&self) {
        for caller in &self.all() {
            caller.handouts.write(&caller.name);
        }
    }

    /// Every caller, however it authenticates.
    pub fn all(&self) -> Vec<Arc<Caller>> {
        let table = self.table.load();
        let mut all: Vec<Arc<Caller>> =
            table.by_hash.values().chain(table.by_dns_name.values()).chain(table.by_uid.values()).cloned().collect();
        all.sort_by(|a, b| Arc::as_ptr(a).cmp(&Arc::as_ptr(b)));
        all.dedup_by(|a, b| Arc::ptr_eq(a, b));
        all
    }

    /// The caller presenting `token`. Lookup is by the token's SHA-256, so the time taken does
    /// not depend on how much of a guessed token is right.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Caller>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.table.load().by_hash.get(&digest).cloned()
    }

    /// The caller presenting bearer `token` and its credential, for every gRPC call. A token
    /// accepted before is found by its keyed SipHash ([`TokenKey`]) without hashing it with
    /// SHA-256 again; any other is proven by its SHA-256 (so time taken does not depend on how
    /// much of a guessed token is right) and, when a caller has it, remembered.
    pub fn identify_token(&self, token: &str) -> Option<(Arc<Caller>, Credential)> {
        let table = self.table.load();
        let key = self.token_key.of(token);
        if let Some(known) = table.recognized.load().get(&key) {
            return Some((Arc::clone(&known.caller), Credential::Token(known.digest)));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let caller = table.by_hash.get(&digest)?;
        // Copy on write: at most one insert per configured token in the table's lifetime.
        table.recognized.rcu(|known| {
            let mut known = HashMap::clone(known);
            known.insert(key, Recognized { caller: Arc::clone(caller), digest });
            known
        });
        Some((Arc::clone(caller), Credential::Token(digest)))
    }

    /// The caller whose TLS client certificate (already verified against the client CA by the
    /// handshake) names one of our callers' DNS names, with the name that matched.
    pub fn by_certificate(
        &self,
        certs: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Option<(Arc<Caller>, Credential)> {
        let leaf = certs.first()?;
        let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
        let table = self.table.load();
        cert.valid_dns_names().find_map(|name| {
            let name = name.to_ascii_lowercase();
            table.by_dns_name.get(&name).map(|caller| (Arc::clone(caller), Credential::Certificate(name)))
        })
    }

    /// The caller whose process uid is on the other end of the Unix socket.
    pub fn by_uid(&self, uid: u32) -> Option<Arc<Caller>> {
        self.table.load().by_uid.get(&uid).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(role: &str, token: &str, profiles: &[&str]) -> CallerConfig {
        CallerConfig {
            name: format!("{role}-caller"),
            role: role.parse().unwrap(),
            token_sha256: hash_token(token),
            cert_dns_name: String::new(),
            unix_uid: None,
            profiles: profiles.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Roles grant exactly what DESIGN says; consumers are bound to their patterns.
    #[test]
    fn roles() {
        let callers = Callers::new(&[
            config("admin", "a", &[]),
            config("viewer", "v", &[]),
            config("consumer", "c", &["mail-*"]),
        ]);
        let admin = callers.authenticate("a").unwrap();
        let viewer = callers.authenticate("v").unwrap();
        let consumer = callers.authenticate("c").unwrap();
        assert!(callers.authenticate("x").is_none());
        assert!(admin.require_admin().is_ok() && admin.require_token("any").is_ok());
        assert!(
            viewer.require_viewer().is_ok()
                && viewer.require_admin().is_err()
                && viewer.require_token("mail-in").is_err()
        );
        assert!(consumer.require_token("mail-in").is_ok() && consumer.require_token("box").is_err());
        assert!(consumer.require_viewer().is_err());
    }

    /// A consumer's remembered verdicts answer like its patterns, and their number is bounded.
    #[test]
    fn remembered_verdicts() {
        let callers = Callers::new(&[config("consumer", "c", &["mail-*"])]);
        let consumer = callers.authenticate("c").unwrap();
        for round in 0..2 {
            assert!(consumer.require_token("mail-in").is_ok(), "round {round}");
            assert!(consumer.require_token("box").is_err(), "round {round}");
        }
        for i in 0..2 * MATCH_CACHE_LIMIT {
            assert!(consumer.require_token(&format!("mail-{i}")).is_ok());
            assert!(consumer.require_token(&format!("other-{i}")).is_err());
        }
        assert_eq!(consumer.matched.len(), MATCH_CACHE_LIMIT);
    }

    /// Item 7 (#14): consumers cannot pin memory. A name that is not a valid profile name is
    /// refused before it is matched, so it is never remembered, even under a pattern that
    /// matches everything; the remembered names stay within their byte bound.
    #[test]
    fn consumers_cannot_pin_memory() {
        let callers = Callers::new(&[config("consumer", "c", &["*"])]);
        let consumer = callers.authenticate("c").unwrap();
        let huge = "m".repeat(4 << 20);
        let invalid = |r| matches!(r, Err(TokenRefused::InvalidName(e)) if e.field == "name");
        assert!(invalid(consumer.require_token(&huge)), "a 4 MiB name is refused");
        assert!(invalid(consumer.require_token("Mail")), "an invalid name is refused");
        assert_eq!(consumer.matched.len(), 0, "invalid names are not remembered");
        // Invalid for every caller, admins included; a valid name outside the patterns is
        // PERMISSION_DENIED (tested in `roles`).
        let admin = Callers::new(&[config("admin", "a", &[])]).authenticate("a").unwrap();
        assert!(invalid(admin.require_token(&huge)));
        // Valid names fill the cache up to its byte bound, not past it.
        for i in 0..MATCH_CACHE_LIMIT {
            assert!(consumer.require_token(&format!("{i:0>60}")).is_ok());
        }
        let bytes: usize = consumer.matched.iter().map(|e| e.key().len()).sum();
        assert!(bytes <= MATCH_CACHE_BYTES && bytes + 60 > MATCH_CACHE_BYTES, "{bytes} bytes remembered");
        assert_eq!(consumer.matched_bytes.load(Ordering::Relaxed), bytes);
    }

    /// The accepted-token index answers exactly as the SHA-256 table does: the same caller and
    /// credential for a known token, the first time and after; nothing for an unknown or a
    /// nearly right token (which never enters the index); nothing once a reload removed the
    /// caller; and one entry per configured token however often it is presented.
    #[test]
    fn accepted_tokens_are_remembered_only_while_their_caller_exists() {
        let callers = Callers::new(&[config("consumer", "c-token", &["mail-*"]), config("admin", "a-token", &[])]);
        let recognized = |callers: &Callers| callers.table.load().recognized.load().len();
        for round in 0..3 {
            let (caller, credential) = callers.identify_token("c-token").expect("a configured token");
            assert_eq!(caller.name, "consumer-caller", "round {round}");
            assert_eq!(credential, Credential::of_token("c-token"), "round {round}");
            assert!(Arc::ptr_eq(&caller, &callers.authenticate("c-token").expect("the same caller")));
        }
        assert_eq!(recognized(&callers), 1, "one entry for one token presented three times");
        for wrong in ["c-tokeN", "c-toke", "c-token ", "", "a-token\0"] {
            assert!(callers.identify_token(wrong).is_none(), "{wrong:?} is refused");
        }
        assert_eq!(recognized(&callers), 1, "refused tokens are not remembered");
        assert!(callers.identify_token("a-token").is_some());
        assert_eq!(recognized(&callers), 2);

        callers.replace(&[config("admin", "a-token", &[])]);
        assert!(callers.identify_token("c-token").is_none(), "a removed caller's remembered token is refused");
        assert_eq!(recognized(&callers), 0, "a reloaded table starts with nothing remembered");
        let (admin, _) = callers.identify_token("a-token").expect("the admin stays");
        assert_eq!(admin.role, Role::Admin);
    }

    /// The index key depends on the process's secret key: two tables index the same token
    /// differently, and the key never shows in Debug output.
    #[test]
    fn the_index_key_is_secret_and_per_process() {
        let (one, two) = (Callers::new(&[]), Callers::new(&[]));
        assert_ne!(one.token_key.of("t"), two.token_key.of("t"));
        assert_eq!(one.token_key.of("t"), one.token_key.of("t"));
        assert!(!format!("{one:?}").contains(&format!("{:?}", one.token_key.key)));
    }
}
