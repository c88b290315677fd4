//! Secrets at rest: a key ring of XChaCha20-Poly1305 keys, each with an id, one of them active.
//!
//! A sealed value is `VERSION ‖ key id (4 bytes, big-endian) ‖ nonce (24) ‖ ciphertext+tag`. The
//! associated data binds the value to what it is (`purpose`) and to whom it belongs (the profile
//! name), so a sealed refresh token cannot be moved to another profile or field. Every value
//! carries its key id, so keys can rotate: new values are sealed under the active key, old ones
//! open under whichever key sealed them.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::path::Path;

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const SEALED_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
/// The store's `meta` entry holding a sealed known text, which tells at start whether the
/// configured key is the store's.
pub const CANARY_META_KEY: &str = "key_canary";
/// The canary's plaintext.
pub const CANARY_TEXT: &[u8] = b"tokend key canary v1";
/// Key length in bytes (256-bit keys).
pub const KEY_LEN: usize = 32;

/// What went wrong sealing or opening a value, or loading a key.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The value was sealed under a key the ring does not hold.
    #[error("sealed with key {0:08x}, which is not in the key ring")]
    UnknownKey(u32),
    /// Authentication failed: wrong key, tampered value, or wrong owner/purpose.
    #[error("sealed value does not open (wrong key or tampered data)")]
    Open,
    /// The value is too short or of an unknown version.
    #[error("sealed value is malformed")]
    Malformed,
    /// Sealing failed (no active key in the ring, or a value beyond the cipher's limit). An
    /// error, never an empty value: elsewhere empty means "no secret held".
    #[error("sealing a value failed: {0}")]
    Seal(&'static str),
    /// The key material is not base64 of 32 bytes.
    #[error("key is not base64 of {KEY_LEN} bytes")]
    BadKey,
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What a sealed value holds; part of the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A profile's OAuth client secret.
    ClientSecret,
    /// An access token.
    AccessToken,
    /// A refresh token.
    RefreshToken,
    /// A PKCE code verifier of a pending consent.
    PkceVerifier,
    /// The store's key canary.
    Canary,
    /// A landing-page session cookie: sealed so any replica holding the key can read it, and
    /// no browser can forge or read one.
    Session,
}

impl Purpose {
    fn label(self) -> &'static str {
        match self {
            Self::ClientSecret => "client_secret",
            Self::AccessToken => "access_token",
            Self::RefreshToken => "refresh_token",
            Self::PkceVerifier => "pkce_verifier",
            Self::Canary => "canary",
            Self::Session => "session",
        }
    }
}

fn associated_data(purpose: Purpose, owner: &str) -> Vec<u8> {
    format!("tokend/v1|{}|{owner}", purpose.label()).into_bytes()
}

/// One 256-bit key and its id.
struct Key {
    id: u32,
    cipher: XChaCha20Poly1305,
}

/// One generation of the ring: its keys and the active one.
struct Keys {
    keys: HashMap<u32, Key>,
    active: u32,
}

/// The keys tokend can open values with, and the one it seals new values with. The ring can be
/// replaced while the daemon runs ([`KeyRing::replace`]), so a new active key loads on SIGHUP
/// without a restart; readers always see one whole generation.
pub struct KeyRing {
    current: ArcSwap<Keys>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<_> = self.ids().iter().map(|id| format!("{id:08x}")).collect();
        f.debug_struct("KeyRing").field("active", &format_args!("{:08x}", self.active_id())).field("ids", &ids).finish()
    }
}

/// The id of a key: the first four bytes of a hash of it, so the same key always has the same id
/// and ids never reveal the key.
pub fn key_id(key: &[u8; KEY_LEN]) -> u32 {
    let digest = Sha256::new().chain_update(b"tokend key id v1").chain_update(key).finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

impl KeyRing {
    /// A ring holding one key, which is active.
    pub fn single(key: &[u8; KEY_LEN]) -> Self {
        let id = key_id(key);
        let cipher = XChaCha20Poly1305::new(key.into());
        let mut keys = HashMap::new();
        keys.insert(id, Key { id, cipher });
        Self { current: ArcSwap::from_pointee(Keys { keys, active: id }) }
    }

    /// A ring from several keys; the first is active.
    pub fn from_keys(keys: &[Zeroizing<[u8; KEY_LEN]>]) -> Result<Self, CryptoError> {
        let (first, rest) = keys.split_first().ok_or(CryptoError::BadKey)?;
        let id = key_id(first);
        let mut map = HashMap::new();
        map.insert(id, Key { id, cipher: XChaCha20Poly1305::new((&**first).into()) });
        for key in rest {
            let id = key_id(key);
            map.entry(id).or_insert_with(|| Key { id, cipher: XChaCha20Poly1305::new((&**key).into()) });
        }
        Ok(Self { current: ArcSwap::from_pointee(Keys { keys: map, active: id }) })
    }

    /// Makes `other`'s keys this ring's keys: values sealed from now on use its active key.
    /// Values sealed under a key that `other` lacks no longer open, so callers check first
    /// that no stored value still needs such a key.
    pub fn replace(&self, other: KeyRing) {
        self.current.store(other.current.into_inner());
    }

    /// The id of the key new values are sealed under.
    pub fn active_id(&self) -> u32 {
        self.current.load().active
    }

    /// The ids of every key in the ring, sorted.
    pub fn ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.current.load().keys.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Seals `plaintext` for `owner` (a profile name, or "" for store-wide values).
    pub fn seal(&self, purpose: Purpose, owner: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let current = self.current.load();
        // The active key is always in the ring (both constructors put it there); should that
        // ever break, the write fails loudly instead of storing an empty "no secret" value.
        let key = current.keys.get(&current.active).ok_or(CryptoError::Seal("the active key is not in the ring"))?;
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = XNonce::from(nonce_bytes);
        let aad = associated_data(purpose, owner);
        // XChaCha20-Poly1305 encryption fails only for messages beyond 256 GiB.
        let ciphertext = key
            .cipher
            .encrypt(&nonce, Payload { msg: plaintext, aad: &aad })
            .map_err(|_| CryptoError::Seal("the cipher refused the value"))?;
        let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(&key.id.to_be_bytes());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Seals a secret string.
    pub fn seal_secret(&self, purpose: Purpose, owner: &str, secret: &SecretString) -> Result<Vec<u8>, CryptoError> {
        self.seal(purpose, owner, secret.expose_secret().as_bytes())
    }

    /// Opens a value sealed by [`KeyRing::seal`] with the same purpose and owner.
    pub fn open(&self, purpose: Purpose, owner: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < HEADER_LEN || sealed[0] != SEALED_VERSION {
            return Err(CryptoError::Malformed);
        }
        let id = u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]);
        let current = self.current.load();
        let key = current.keys.get(&id).ok_or(CryptoError::UnknownKey(id))?;
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(&sealed[5..HEADER_LEN]);
        let nonce = XNonce::from(nonce_bytes);
        let aad = associated_data(purpose, owner);
        key.cipher
            .decrypt(&nonce, Payload { msg: &sealed[HEADER_LEN..], aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Open)
    }

    /// Opens a sealed UTF-8 secret.
    pub fn open_secret(&self, purpose: Purpose, owner: &str, sealed: &[u8]) -> Result<SecretString, CryptoError> {
        let plain = self.open(purpose, owner, sealed)?;
        let text = std::str::from_utf8(&plain).map_err(|_| CryptoError::Malformed)?;
        Ok(SecretString::from(text.to_owned()))
    }

    /// The key id a sealed value names, if it is well formed.
    pub fn sealed_key_id(sealed: &[u8]) -> Option<u32> {
        (sealed.len() >= HEADER_LEN && sealed[0] == SEALED_VERSION)
            .then(|| u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]))
    }
}

/// Decodes a key written as base64 (surrounding whitespace ignored).
pub fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| CryptoError::BadKey)?);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if bytes.len() != KEY_LEN {
        return Err(CryptoError::BadKey);
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

/// A fresh random key, base64-encoded, as written to key files.
pub fn generate_key_text() -> Zeroizing<String> {
    let key: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(rand::random());
    Zeroizing::new(STANDARD.encode(*key))
}

/// A random bearer token: 256 bits, base64url without padding.
pub fn random_token() -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
    URL_SAFE_NO_PAD.encode(*bytes)
}

/// Reads a key file.
pub fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|source| CryptoError::KeyFile { path: path.display().to_string(), source })?,
    );
    decode_key(&text)
}

/// Writes `contents` to a new file readable only by its owner (mode 0600); fails if it exists.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KeyRing {
        KeyRing::single(&[7u8; KEY_LEN])
    }

    /// A sealed value opens with the same purpose and owner, and only with them.
    #[test]
    fn seal_binds_purpose_and_owner() {
        let ring = ring();
        let sealed = ring.seal(Purpose::RefreshToken, "box-ops", b"rt-1").unwrap();
        assert_eq!(&**ring.open(Purpose::RefreshToken, "box-ops", &sealed).unwrap(), b"rt-1");
        assert!(matches!(ring.open(Purpose::RefreshToken, "other", &sealed), Err(CryptoError::Open)));
        assert!(matches!(ring.open(Purpose::AccessToken, "box-ops", &sealed), Err(CryptoError::Open)));
        assert!(!sealed.windows(4).any(|w| w == b"rt-1"));
    }

    /// A different key does not open the value and is named by its id.
    #[test]
    fn wrong_key_is_detected() {
        let sealed = ring().seal(Purpose::Canary, "", b"canary").unwrap();
        let other = KeyRing::single(&[8u8; KEY_LEN]);
        assert!(matches!(other.open(Purpose::Canary, "", &sealed), Err(CryptoError::UnknownKey(_))));
    }

    /// A replaced ring seals under its own active key; a value of a key it lacks no longer opens.
    #[test]
    fn replaced_ring_takes_over() {
        let ring = ring();
        let old = ring.seal(Purpose::RefreshToken, "p", b"rt").unwrap();
        ring.replace(KeyRing::from_keys(&[Zeroizing::new([9u8; KEY_LEN]), Zeroizing::new([7u8; KEY_LEN])]).unwrap());
        assert_eq!(ring.active_id(), key_id(&[9u8; KEY_LEN]));
        assert_eq!(&**ring.open(Purpose::RefreshToken, "p", &old).unwrap(), b"rt");
        let new = ring.seal(Purpose::RefreshToken, "p", b"rt").unwrap();
        assert_eq!(KeyRing::sealed_key_id(&new), Some(key_id(&[9u8; KEY_LEN])));
        ring.replace(KeyRing::single(&[9u8; KEY_LEN]));
        assert!(matches!(ring.open(Purpose::RefreshToken, "p", &old), Err(CryptoError::UnknownKey(_))));
        assert_eq!(ring.ids(), vec![key_id(&[9u8; KEY_LEN])]);
    }

    /// Tampering with any byte makes opening fail.
    #[test]
    fn tampering_is_detected() {
        let ring = ring();
        let mut sealed = ring.seal(Purpose::AccessToken, "p", b"at").unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(ring.open(Purpose::AccessToken, "p", &sealed).is_err());
        assert!(matches!(ring.open(Purpose::AccessToken, "p", &[1, 2]), Err(CryptoError::Malformed)));
    }

    /// A ring of two keys opens values of both and seals under the first.
    #[test]
    fn key_ring_rotation() {
        let old = ring().seal(Purpose::ClientSecret, "p", b"s").unwrap();
        let ring2 = KeyRing::from_keys(&[Zeroizing::new([9u8; KEY_LEN]), Zeroizing::new([7u8; KEY_LEN])]).unwrap();
        assert_eq!(&**ring2.open(Purpose::ClientSecret, "p", &old).unwrap(), b"s");
        let new = ring2.seal(Purpose::ClientSecret, "p", b"s").unwrap();
        assert_eq!(KeyRing::sealed_key_id(&new), Some(key_id(&[9u8; KEY_LEN])));
    }

    /// Generated key text decodes back to a key; junk does not.
    #[test]
    fn key_text_round_trip() {
        let text = generate_key_text();
        assert!(decode_key(&text).is_ok());
        assert!(decode_key("not base64!").is_err());
        assert!(decode_key("AAAA").is_err());
    }

    proptest::proptest! {
        /// #13 item 10: sealing never yields an empty value (which the store reads as "no
        /// secret held"): any value, owner and purpose seals to something that opens again.
        /// Failure is an error (`CryptoError::Seal`) that stops the write.
        #[test]
        fn item10_sealing_never_yields_an_empty_value(value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048), owner in "[a-z0-9._-]{0,63}") {
            let ring = ring();
            let sealed = ring.seal(Purpose::AccessToken, &owner, &value).unwrap();
            proptest::prop_assert!(sealed.len() > HEADER_LEN);
            proptest::prop_assert_eq!(&**ring.open(Purpose::AccessToken, &owner, &sealed).unwrap(), value.as_slice());
        }
    }
}
