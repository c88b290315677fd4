//! The invariants of tokend's parsers of hostile input, one function per fuzz target.
//!
//! Shared by the fuzz targets (`fuzz/fuzz_targets/*.rs`, through `#[path = "../checks.rs"]`) and
//! by the corpus replay test (`tests/it/fuzz_corpus.rs`, through `#[path = "../../fuzz/checks.rs"]`),
//! so `cargo test` checks every corpus input exactly as the fuzzer did. Each function takes the
//! raw input and panics (through an assertion) when an invariant breaks; a panic inside the code
//! under test is a finding too. Nothing here may print the input's secrets on success.

use prost::Message;
use tokend::config::Config;
use tokend::crypto::{CryptoError, KEY_LEN, KeyRing, Purpose};
use tokend::provider::{MAX_LIFETIME, TokenSet, parse_token_reply};
use tokend::store::{ConnectionRecord, ConsentRecord, ProfileRecord, RefreshPolicyRecord};

/// Strings of the body at least this long must never show in an error (shorter ones may match
/// ordinary words of the message by chance).
const ECHO_MIN_LEN: usize = 9;

/// Provider token replies: `tokend::provider::parse_token_reply`.
///
/// - On `Ok`: the access token is not empty; `expires_in`, if any, is positive and at most
///   [`MAX_LIFETIME`]; the `Debug` text does not depend on the access or refresh token (both are
///   redacted).
/// - On `Err`: neither the `Display` nor the `Debug` text of the error contains a string value of
///   the body (when the body is JSON) of [`ECHO_MIN_LEN`] characters or more, unless that string
///   is part of the error's fixed wording anyway.
pub fn token_reply(body: &[u8]) {
    match parse_token_reply(body) {
        Ok(set) => check_token_set(&set),
        Err(err) => {
            let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
                return;
            };
            let mut strings = Vec::new();
            collect_strings(&json, &mut strings);
            let shown = [err.to_string(), format!("{err:?}")];
            let fixed = FIXED_WORDING.get_or_init(fixed_error_wording);
            for s in strings.iter().filter(|s| s.chars().count() >= ECHO_MIN_LEN) {
                if fixed.iter().any(|f| f.contains(s.as_str())) {
                    continue;
                }
                for text in &shown {
                    assert!(!text.contains(s.as_str()), "the error echoes a body value {s:?}: {text}");
                }
            }
        }
    }
}

fn check_token_set(set: &TokenSet) {
    use secrecy::ExposeSecret as _;
    assert!(!set.access_token.expose_secret().is_empty(), "accepted a reply with an empty access token");
    if let Some(lifetime) = set.expires_in {
        assert!(!lifetime.is_zero(), "expires_in is zero (should be None)");
        assert!(lifetime <= MAX_LIFETIME, "expires_in {lifetime:?} is above MAX_LIFETIME");
    }
    // Debug must redact the secrets: the same set with other secrets prints the same.
    let mut other = set.clone();
    other.access_token = String::from("x").into();
    other.refresh_token = set.refresh_token.as_ref().map(|_| String::from("y").into());
    assert_eq!(format!("{set:?}"), format!("{other:?}"), "TokenSet's Debug shows a secret");
}

/// Every string value in a JSON document (object keys are names, not values).
fn collect_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// [`fixed_error_wording`], computed once.
static FIXED_WORDING: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// The error texts of bodies holding no strings, one per kind of failure: a body string that is
/// part of these is not an echo.
fn fixed_error_wording() -> Vec<String> {
    [&b""[..], b"x", b"{", b"{}", b"[]", b"{\"access_token\":1}"]
        .iter()
        .filter_map(|body| parse_token_reply(body).err())
        .flat_map(|err| [err.to_string(), format!("{err:?}")])
        .collect()
}

/// Store records: `prost::Message::decode` of `ProfileRecord`, `ConnectionRecord`,
/// `ConsentRecord` (and the nested `RefreshPolicyRecord`) on the same bytes.
///
/// Whatever decodes re-encodes to bytes that decode to an equal value, and encoding is stable:
/// the second encoding is byte-for-byte the first (this also covers NaN doubles, which are not
/// `==` to themselves).
pub fn store_records(data: &[u8]) {
    round_trip::<ProfileRecord>(data, profile_has_nan);
    round_trip::<ConnectionRecord>(data, |_| false);
    round_trip::<ConsentRecord>(data, |_| false);
    round_trip::<RefreshPolicyRecord>(data, |p| p.skew_ratio.is_some_and(f64::is_nan));
}

fn profile_has_nan(p: &ProfileRecord) -> bool {
    p.refresh_policy.as_ref().and_then(|r| r.skew_ratio).is_some_and(f64::is_nan)
}

/// Decode, encode, decode, encode: equal values and equal bytes. `has_nan` tells when `==`
/// cannot hold (a NaN field) and only the bytes are compared.
fn round_trip<M: Message + Default + PartialEq>(data: &[u8], has_nan: fn(&M) -> bool) {
    let Ok(first) = M::decode(data) else {
        return;
    };
    let encoded = first.encode_to_vec();
    assert_eq!(encoded.len(), first.encoded_len(), "encoded_len disagrees with encode");
    let second = match M::decode(encoded.as_slice()) {
        Ok(second) => second,
        Err(e) => panic!("a re-encoded {} does not decode: {e}", std::any::type_name::<M>()),
    };
    assert!(first == second || has_nan(&first), "{} changed in a round trip", std::any::type_name::<M>());
    assert_eq!(
        encoded,
        second.encode_to_vec(),
        "{} encodes differently after a round trip",
        std::any::type_name::<M>()
    );
}

/// The configuration parser: `Config::from_toml_str` on the input (when it is UTF-8).
///
/// On `Ok`, `validate()` passes; `toml::to_string` of the result succeeds, parses again, and
/// serializes to the same text (the effective configuration `check-config` prints is faithful).
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml_str(text) else {
        return;
    };
    if let Err(e) = config.validate() {
        panic!("from_toml_str returned a configuration that does not validate: {e}");
    }
    let printed = match toml::to_string(&config) {
        Ok(printed) => printed,
        Err(e) => panic!("an accepted configuration does not serialize: {e}\n{config:?}"),
    };
    let again = match Config::from_toml_str(&printed) {
        Ok(again) => again,
        Err(e) => panic!("a serialized configuration does not parse again: {e}\n{printed}"),
    };
    let reprinted = match toml::to_string(&again) {
        Ok(reprinted) => reprinted,
        Err(e) => panic!("a re-parsed configuration does not serialize: {e}\n{printed}"),
    };
    assert_eq!(printed, reprinted, "the configuration changed in a serialize/parse round trip");
}

/// The key ring every `sealed_value` input is opened with.
const FUZZ_KEY: [u8; KEY_LEN] = [7; KEY_LEN];

/// Owners tried for every input: the one of the brief, and the store-wide owner.
const OWNERS: [&str; 2] = ["p", ""];

/// Sealed values: `KeyRing::open` (and `open_secret`) under a fixed one-key ring, for every purpose.
///
/// Arbitrary bytes never open (forging a Poly1305 tag is out of reach of a fuzzer, and the seed
/// corpus holds only values sealed for other owners, purposes or keys), and the error is the
/// one the header calls for: `Malformed` for a short value or an unknown version, `UnknownKey`
/// with the id written in the value for a key not in the ring, `Open` otherwise.
pub fn sealed_value(sealed: &[u8]) {
    let ring = KeyRing::single(&FUZZ_KEY);
    let header_id = KeyRing::sealed_key_id(sealed);
    for purpose in
        [Purpose::ClientSecret, Purpose::AccessToken, Purpose::RefreshToken, Purpose::PkceVerifier, Purpose::Canary]
    {
        for owner in OWNERS {
            let err = match ring.open(purpose, owner, sealed) {
                Ok(_) => panic!("arbitrary bytes opened as a sealed {purpose:?} of {owner:?}"),
                Err(err) => err,
            };
            match (header_id, &err) {
                (None, CryptoError::Malformed) => {}
                (Some(id), CryptoError::UnknownKey(named)) if id == *named && id != ring.active_id() => {}
                (Some(id), CryptoError::Open) if id == ring.active_id() => {}
                _ => panic!("unexpected error {err:?} for a value whose header names key {header_id:?}"),
            }
            assert!(ring.open_secret(purpose, owner, sealed).is_err(), "open_secret succeeded where open failed");
        }
    }
}
