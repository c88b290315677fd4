//! Landing-page sessions. A session is a cookie holding [`Claims`] sealed with the daemon's key
//! ([`Purpose::Session`]): any replica that shares the store and the key can read it, a browser
//! can neither read nor forge it, and no process keeps a session table. The claims name the
//! caller by its token's hash, so the caller is looked up again on every request and a reload
//! that removes it ends the session at once. Idle expiry slides: the cookie is re-issued with a
//! new `seen` as the session is used. Sign-out is recorded in the store's metadata until the
//! session's absolute expiry, so a copied cookie is dead on every replica.

use std::collections::BTreeMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;
use crate::config::SessionConfig;
use crate::crypto::{KeyRing, Purpose};
use crate::store::Store;

/// The session cookie's name.
pub const COOKIE: &str = "tokend_session";
/// The store metadata key holding signed-out sessions (id → absolute expiry).
const SIGNED_OUT_KEY: &str = "web.signed_out_sessions";

/// What a session cookie holds, sealed. Its `Debug` leaves out the CSRF token and the bearer
/// token's hash.
#[derive(Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Random id, named when the session is signed out.
    pub id: String,
    /// Hex SHA-256 of the bearer token signed in with (never the token).
    pub token_sha256: String,
    /// Sign-in time (absolute expiry counts from it).
    pub issued_at_ms: UnixMillis,
    /// Last request (idle expiry counts from it).
    pub seen_at_ms: UnixMillis,
    /// The per-session CSRF token every form carries back.
    pub csrf: String,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("id", &self.id)
            .field("issued_at_ms", &self.issued_at_ms)
            .field("seen_at_ms", &self.seen_at_ms)
            .finish_non_exhaustive()
    }
}

/// Why a cookie is no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Not sealed by our key (forged, damaged, or sealed under a key since dropped).
    #[error("the session cookie does not open")]
    Invalid,
    /// Past its idle or absolute expiry.
    #[error("the session expired")]
    Expired,
    /// Signed out.
    #[error("the session was signed out")]
    SignedOut,
    /// The store could not be read or written.
    #[error("the session store is unavailable")]
    Store,
}

/// Issues, opens and revokes sessions; see the module documentation.
#[derive(Debug)]
pub struct Sessions {
    idle_ms: i64,
    absolute_ms: i64,
    /// Whether cookies carry `Secure` (the listener serves TLS).
    secure: bool,
    /// Serialises this process's sign-outs (other replicas' are met by compare-and-swap).
    sign_out: Mutex<()>,
}

fn random(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    URL_SAFE_NO_PAD.encode(raw)
}

impl Sessions {
    /// Sessions with the configured expiries; `secure` when served over TLS.
    pub fn new(config: &SessionConfig, secure: bool) -> Self {
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        Self {
            idle_ms: ms(config.idle_timeout_secs),
            absolute_ms: ms(config.absolute_timeout_secs),
            secure,
            sign_out: Mutex::new(()),
        }
    }

    /// New claims for a caller who just signed in with a token of this hash.
    pub fn start(&self, token_sha256: String, now: UnixMillis) -> Claims {
        Claims { id: random(16), token_sha256, issued_at_ms: now, seen_at_ms: now, csrf: random(32) }
    }

    /// The `Set-Cookie` value carrying `claims`.
    pub fn cookie(&self, keys: &KeyRing, claims: &Claims) -> Result<String, SessionError> {
        let json = serde_json::to_vec(claims).map_err(|_| SessionError::Invalid)?;
        let sealed = keys.seal(Purpose::Session, "", &json).map_err(|_| SessionError::Invalid)?;
        let max_age = (claims.issued_at_ms + self.absolute_ms - claims.seen_at_ms).max(0) / 1000;
        Ok(format!("{COOKIE}={}; {}; Max-Age={max_age}", URL_SAFE_NO_PAD.encode(sealed), self.attributes()))
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clear_cookie(&self) -> String {
        format!("{COOKIE}=; {}; Max-Age=0", self.attributes())
    }

    fn attributes(&self) -> &'static str {
        if self.secure { "Path=/; HttpOnly; SameSite=Strict; Secure" } else { "Path=/; HttpOnly; SameSite=Strict" }
    }

    /// Opens a cookie value and checks its expiries and the signed-out list. Returns the claims
    /// and whether the cookie should be re-issued (its idle clock slid far enough).
    pub fn open(
        &self,
        keys: &KeyRing,
        store: &dyn Store,
        value: &str,
        now: UnixMillis,
    ) -> Result<(Claims, bool), SessionError> {
        let sealed = URL_SAFE_NO_PAD.decode(value.trim()).map_err(|_| SessionError::Invalid)?;
        let json = keys.open(Purpose::Session, "", &sealed).map_err(|_| SessionError::Invalid)?;
        let mut claims: Claims = serde_json::from_slice(&json).map_err(|_| SessionError::Invalid)?;
        if now >= claims.issued_at_ms + self.absolute_ms || now >= claims.seen_at_ms + self.idle_ms {
            return Err(SessionError::Expired);
        }
        if signed_out(store)?.contains_key(&claims.id) {
            return Err(SessionError::SignedOut);
        }
        // Re-issue once a tenth of the idle time has passed: often enough that an active
        // session never idles out, rarely enough that most replies carry no cookie.
        let reissue = now - claims.seen_at_ms >= (self.idle_ms / 10).max(1000);
        if reissue {
            claims.seen_at_ms = now;
        }
        Ok((claims, reissue))
    }

    /// Records the session as signed out until its absolute expiry (entries past theirs are
    /// dropped on the way). The list is shared by every replica on the store: it is written by
    /// compare-and-swap over the value read, and read again when another replica changed it in
    /// between, so no replica's sign-out is lost.
    pub fn sign_out(&self, store: &dyn Store, claims: &Claims, now: UnixMillis) -> Result<(), SessionError> {
        let _serial = self.sign_out.lock().map_err(|_| SessionError::Store)?;
        for _ in 0..SIGN_OUT_ATTEMPTS {
            let before = store.meta(SIGNED_OUT_KEY).map_err(|_| SessionError::Store)?;
            let mut list = parse_signed_out(before.as_deref());
            list.retain(|_, until| *until > now);
            list.insert(claims.id.clone(), claims.issued_at_ms + self.absolute_ms);
            let bytes = serde_json::to_vec(&list).map_err(|_| SessionError::Store)?;
            if store
                .compare_and_swap_meta(SIGNED_OUT_KEY, before.as_deref(), &bytes)
                .map_err(|_| SessionError::Store)?
            {
                return Ok(());
            }
        }
        tracing::warn!(attempts = SIGN_OUT_ATTEMPTS, "the signed-out list kept changing under this sign-out");
        Err(SessionError::Store)
    }
}

/// How many times a sign-out reads the list again when other replicas keep changing it.
const SIGN_OUT_ATTEMPTS: usize = 16;

/// The signed-out sessions, by id, with the time each would have expired anyway.
fn signed_out(store: &dyn Store) -> Result<BTreeMap<String, UnixMillis>, SessionError> {
    let stored = store.meta(SIGNED_OUT_KEY).map_err(|_| SessionError::Store)?;
    Ok(parse_signed_out(stored.as_deref()))
}

/// The stored list; an unreadable one counts as empty (the next sign-out writes it anew).
fn parse_signed_out(stored: Option<&[u8]>) -> BTreeMap<String, UnixMillis> {
    stored.and_then(|bytes| serde_json::from_slice(bytes).ok()).unwrap_or_default()
}

/// The session cookie's value in a `Cookie` header, if present.
pub fn from_header(cookies: &str) -> Option<&str> {
    cookies.split(';').filter_map(|pair| pair.trim().split_once('=')).find(|(k, _)| *k == COOKIE).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use crate::store::testing::GatedStore;

    fn setup() -> (Sessions, KeyRing, SledStore) {
        let config = SessionConfig { idle_timeout_secs: 60, absolute_timeout_secs: 600 };
        (Sessions::new(&config, false), KeyRing::single(&[7; 32]), SledStore::temporary().unwrap())
    }

    fn value(cookie: &str) -> &str {
        cookie.split(';').next().unwrap().split_once('=').unwrap().1
    }

    /// A cookie opens with the key that sealed it, slides its idle clock, and expires idle or
    /// absolutely; another key cannot open it.
    #[test]
    fn seal_open_expire() {
        let (sessions, keys, store) = setup();
        let claims = sessions.start("ab".repeat(32), 1_000_000);
        let cookie = sessions.cookie(&keys, &claims).unwrap();
        assert!(cookie.contains("HttpOnly; SameSite=Strict") && !cookie.contains("Secure"));
        let (opened, reissue) = sessions.open(&keys, &store, value(&cookie), 1_001_000).unwrap();
        assert_eq!(opened.csrf, claims.csrf);
        assert!(!reissue);
        let (slid, reissue) = sessions.open(&keys, &store, value(&cookie), 1_030_000).unwrap();
        assert!(reissue && slid.seen_at_ms == 1_030_000);
        assert_eq!(sessions.open(&keys, &store, value(&cookie), 1_060_000).unwrap_err(), SessionError::Expired);
        let other = KeyRing::single(&[8; 32]);
        assert_eq!(sessions.open(&other, &store, value(&cookie), 1_001_000).unwrap_err(), SessionError::Invalid);
        let late = Claims { seen_at_ms: 1_599_000, ..claims };
        let cookie = sessions.cookie(&keys, &late).unwrap();
        assert_eq!(sessions.open(&keys, &store, value(&cookie), 1_600_000).unwrap_err(), SessionError::Expired);
    }

    /// A signed-out session stays refused; others are not affected.
    #[test]
    fn sign_out_is_recorded() {
        let (sessions, keys, store) = setup();
        let a = sessions.start("aa".into(), 1_000);
        let b = sessions.start("bb".into(), 1_000);
        sessions.sign_out(&store, &a, 2_000).unwrap();
        let cookie = sessions.cookie(&keys, &a).unwrap();
        assert_eq!(sessions.open(&keys, &store, value(&cookie), 3_000).unwrap_err(), SessionError::SignedOut);
        let cookie = sessions.cookie(&keys, &b).unwrap();
        assert!(sessions.open(&keys, &store, value(&cookie), 3_000).is_ok());
        assert_eq!(from_header("a=1; tokend_session=xyz; b=2"), Some("xyz"));
    }

    /// Debug output names the session, never its CSRF token or the bearer token's hash.
    #[test]
    fn debug_leaves_out_the_secrets() {
        let (sessions, _, _) = setup();
        let claims = sessions.start("ab".repeat(32), 1_000);
        let shown = format!("{claims:?}");
        assert!(shown.contains(&claims.id), "{shown}");
        assert!(!shown.contains(&claims.csrf) && !shown.contains(&claims.token_sha256), "{shown}");
    }

    /// Two replicas sign out at the same moment: replica B writes its sign-out while replica A
    /// is between reading the signed-out list and writing it back. Both sessions stay refused
    /// on every replica (A's write, based on the list before B's, must not drop B's entry).
    #[test]
    fn sign_outs_racing_on_two_replicas_are_both_kept() {
        let config = SessionConfig { idle_timeout_secs: 60, absolute_timeout_secs: 600 };
        let (replica_a, keys) = (Sessions::new(&config, false), KeyRing::single(&[7; 32]));
        let a = replica_a.start("aa".into(), 1_000);
        let b = replica_a.start("bb".into(), 1_000);
        let (store, _) = GatedStore::new();
        let (b_on_replica_b, config_b) = (b.clone(), config.clone());
        store.after_next_meta_read(
            SIGNED_OUT_KEY,
            Box::new(move |shared| {
                Sessions::new(&config_b, false).sign_out(shared, &b_on_replica_b, 2_000).unwrap();
            }),
        );
        replica_a.sign_out(store.as_ref(), &a, 2_000).unwrap();
        for claims in [&a, &b] {
            let cookie = replica_a.cookie(&keys, claims).unwrap();
            assert_eq!(
                replica_a.open(&keys, store.as_ref(), value(&cookie), 3_000).unwrap_err(),
                SessionError::SignedOut,
                "session {} is still valid",
                claims.id
            );
        }
    }
}
