//! Replays the fuzz corpora in plain `cargo test`: every file of `fuzz/seeds/<target>/`,
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through the same check as the
//! fuzz target (`fuzz/checks.rs`, shared source), so CI re-checks every input the fuzzers ever
//! kept, cheaply, without cargo-fuzz. Fuzzing for longer is a separate command (`fuzz/README.md`).
//!
//! A missing or empty seed or corpus directory fails the test, so it cannot pass by replaying
//! nothing; `regressions/<target>/` exists only once a fuzzer has found something.

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// The directories replayed for a target, and whether each must hold inputs.
const DIRS: [(&str, bool); 3] = [("seeds", true), ("corpus", true), ("regressions", false)];

/// The files of `dir`, sorted; fails if the directory must hold inputs and does not.
fn inputs(dir: &Path, required: bool) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("{}: {e} (a fuzz target without inputs would pass vacuously)", dir.display()),
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file() && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    assert!(!required || !files.is_empty(), "{} holds no inputs", dir.display());
    files
}

/// Runs `check` on every input of `target`, reports how many, and fails naming every input
/// whose check panicked.
fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut counts = Vec::new();
    let mut failed = Vec::new();
    for (kind, required) in DIRS {
        let files = inputs(&root.join(kind).join(target), required);
        for file in &files {
            let data = std::fs::read(file).unwrap();
            if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                failed.push(file.display().to_string());
            }
        }
        counts.push((files.len(), kind));
    }
    let total: usize = counts.iter().map(|(n, _)| n).sum();
    let parts: Vec<String> = counts.iter().map(|(n, kind)| format!("{n} {kind}")).collect();
    // Straight to stderr, not through `eprintln!`, which the test harness captures: CI logs
    // should show how much was replayed.
    let line = format!("fuzz corpus {target}: replayed {total} inputs ({})\n", parts.join(", "));
    std::io::stderr().write_all(line.as_bytes()).unwrap();
    assert!(failed.is_empty(), "{target}: {} input(s) break an invariant:\n{}", failed.len(), failed.join("\n"));
}

/// Provider token replies (`provider::parse_token_reply`).
#[test]
fn token_reply_corpus() {
    replay("token_reply", checks::token_reply);
}

/// Store records (`ProfileRecord`, `ConnectionRecord`, `ConsentRecord` through prost).
#[test]
fn store_records_corpus() {
    replay("store_records", checks::store_records);
}

/// Configuration files (`Config::from_toml_str`).
#[test]
fn config_toml_corpus() {
    replay("config_toml", checks::config_toml);
}

/// Sealed values (`KeyRing::open` under a fixed key ring).
#[test]
fn sealed_value_corpus() {
    replay("sealed_value", checks::sealed_value);
}

/// Writes the binary seeds (store records and sealed values, which are not hand-writable) into
/// `fuzz/seeds/`. Run by hand when the record types change:
/// `cargo test --test it fuzz_corpus::write_binary_seeds -- --ignored`.
#[test]
#[ignore = "writes fuzz/seeds/; run by hand"]
fn write_binary_seeds() {
    use prost::Message as _;
    use tokend::crypto::{KeyRing, Purpose};
    use tokend::store::{ConnectionRecord, ConsentRecord, ProfileRecord, RefreshPolicyRecord};

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let ring = KeyRing::single(&[7; 32]);
    let other_ring = KeyRing::single(&[8; 32]);
    // Owners the fuzz check never opens with ("p" and "" are tried), so none of these opens.
    let sealed_rt = ring.seal(Purpose::RefreshToken, "box-ops", b"rt-8f3e2c1d9a7b6e5f").unwrap();
    let sealed_at = ring.seal(Purpose::AccessToken, "box-ops", b"ya29.a0AfB_byC-example-access-token").unwrap();
    let sealed_secret = ring.seal(Purpose::ClientSecret, "google-mail", b"GOCSPX-example-client-secret").unwrap();
    let sealed_pkce =
        ring.seal(Purpose::PkceVerifier, "box-ops", b"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk").unwrap();

    let profile = ProfileRecord {
        name: "google-mail".into(),
        description: "Gmail API for the mail worker".into(),
        provider: "google".into(),
        grant: 1,
        client_id: "1234567890-abc.apps.googleusercontent.com".into(),
        client_secret_sealed: sealed_secret.clone(),
        scopes: vec!["https://www.googleapis.com/auth/gmail.readonly".into(), "openid".into(), "email".into()],
        authorization_endpoint: "https://accounts.google.com/o/oauth2/v2/auth".into(),
        token_endpoint: "https://oauth2.googleapis.com/token".into(),
        revocation_endpoint: "https://oauth2.googleapis.com/revoke".into(),
        device_authorization_endpoint: "https://oauth2.googleapis.com/device/code".into(),
        redirect_uri: "http://127.0.0.1:8085/oauth/callback".into(),
        extra_authorization_params: [("access_type".into(), "offline".into()), ("prompt".into(), "consent".into())]
            .into(),
        token_endpoint_auth_method: 1,
        refresh_policy: Some(RefreshPolicyRecord {
            mode: 1,
            skew_ratio: Some(0.25),
            skew_floor_ms: 120_000,
            default_lifetime_ms: 3_600_000,
            max_idle_ms: 86_400_000,
        }),
        issuer: "https://accounts.google.com".into(),
        provider_options: [("tenant".into(), "common".into())].into(),
        managed: true,
        create_time_ms: 1_764_000_000_000,
        update_time_ms: 1_764_000_500_000,
        discovered: None,
    };
    write("store_records", "profile-google-full", &profile.encode_to_vec());
    let minimal = ProfileRecord {
        name: "box-ops".into(),
        provider: "box".into(),
        client_id: "abc".into(),
        token_endpoint: "https://api.box.com/oauth2/token".into(),
        ..Default::default()
    };
    write("store_records", "profile-box-minimal", &minimal.encode_to_vec());
    let nan_policy = ProfileRecord {
        refresh_policy: Some(RefreshPolicyRecord { skew_ratio: Some(f64::NAN), ..Default::default() }),
        ..minimal.clone()
    };
    write("store_records", "profile-nan-skew", &nan_policy.encode_to_vec());
    let connection = ConnectionRecord {
        version: 42,
        status: 2,
        access_token_sealed: sealed_at.clone(),
        refresh_token_sealed: sealed_rt.clone(),
        token_type: "Bearer".into(),
        scopes: vec!["root_readwrite".into()],
        expires_at_ms: 1_764_003_600_000,
        refresh_token_expires_at_ms: 1_769_184_000_000,
        last_refreshed_at_ms: 1_764_000_000_000,
        next_refresh_at_ms: 1_764_002_880_000,
        last_error: "provider temporarily unavailable: HTTP 503 (server_error)".into(),
        consecutive_failures: 3,
        pending_consent: b"consent-7f3a".to_vec(),
        connected_at_ms: 1_763_000_000_000,
        token_version: 17,
        connected_account: "ops@example.com".into(),
        token_metadata: [("instance_url".into(), "https://eu.my.salesforce.com".into())].into(),
        status_before_consent: 2,
        not_renewable: false,
    };
    write("store_records", "connection-connected", &connection.encode_to_vec());
    write(
        "store_records",
        "connection-needs-consent",
        &ConnectionRecord { version: 1, status: 4, last_error: "invalid_grant".into(), ..Default::default() }
            .encode_to_vec(),
    );
    let consent = ConsentRecord {
        profile: "box-ops".into(),
        pkce_verifier_sealed: sealed_pkce,
        redirect_uri: "http://127.0.0.1:8085/oauth/callback".into(),
        created_at_ms: 1_764_000_000_000,
        expires_at_ms: 1_764_000_600_000,
        grant: 1,
    };
    write("store_records", "consent-pending", &consent.encode_to_vec());
    write("store_records", "empty", b"");
    // A record with a field number no version knows (tag 99, varint): skipped on decode.
    let mut unknown = minimal.encode_to_vec();
    unknown.extend_from_slice(&[0x98, 0x06, 0x01]);
    write("store_records", "profile-unknown-field", &unknown);

    write("sealed_value", "refresh-token-other-owner", &sealed_rt);
    write("sealed_value", "access-token-other-owner", &sealed_at);
    write("sealed_value", "client-secret-other-owner", &sealed_secret);
    write("sealed_value", "other-key", &other_ring.seal(Purpose::RefreshToken, "p", b"rt-under-another-key").unwrap());
    write("sealed_value", "canary-other-key", &other_ring.seal(Purpose::Canary, "", b"tokend canary").unwrap());
    write("sealed_value", "truncated-header", &sealed_rt[..20]);
    write("sealed_value", "header-only", &sealed_rt[..29]);
    let mut version2 = sealed_rt.clone();
    version2[0] = 2;
    write("sealed_value", "unknown-version", &version2);
    let mut flipped = ring.seal(Purpose::RefreshToken, "q", b"rt-tampered").unwrap();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    write("sealed_value", "tampered-tag", &flipped);
    write("sealed_value", "empty", b"");
}
