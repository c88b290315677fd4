//! Key rotation inside the running daemon: count which keys seal the stored secrets, swap in a
//! reloaded key ring, and re-seal every secret under the active key.
//!
//! Re-sealing rewrites one record at a time with a compare-and-swap ([`Store::rewrite_records`]):
//! a refresh or an admin edit racing with it always wins, and a crash leaves a store in which
//! every value still names the key that sealed it. Readers never wait: the ring holds the old
//! and the new key throughout, and the hot path's cache holds opened tokens anyway.

use std::collections::BTreeMap;

use prost::Message;

use super::{Admin, AdminError};
use crate::crypto::{CANARY_META_KEY, CANARY_TEXT, KeyRing, Purpose};
use crate::engine::EngineError;
use crate::store::{ConnectionRecord, ConsentRecord, ProfileRecord, SealedTree, Store, StoreError};

/// How many passes re-sealing makes before it reports what is left: values that a concurrent
/// writer raced or copied unchanged from an older record are picked up by the next pass.
const RESEAL_PASSES: usize = 4;

/// Sealed values per key id.
pub type KeyUsage = BTreeMap<u32, u64>;

/// What [`Admin::reseal_all`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResealReport {
    /// The key every value is now meant to be sealed under.
    pub active: u32,
    /// Records (and the canary) re-sealed under the active key.
    pub resealed: u64,
    /// Sealed values per key id after the last pass (the active key's count included).
    pub usage: KeyUsage,
    /// Values that did not open with any key of the ring (left as they are).
    pub unreadable: u64,
}

/// Why a reloaded key ring was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyReloadError {
    /// A key that still seals stored values is missing from the new ring.
    #[error(
        "key {id:08x} still seals {values} stored value(s) but is not in the new key configuration; keep its file \
         in keys.previous_key_files until `tokenctl rotate-keys` has re-sealed them"
    )]
    KeyStillInUse {
        /// The key id.
        id: u32,
        /// How many values it seals.
        values: u64,
    },
    /// Scanning the store failed.
    #[error(transparent)]
    Store(#[from] AdminError),
}

/// One sealed field of a record: where it is and what it seals.
struct SealedField<'a> {
    bytes: &'a mut Vec<u8>,
    purpose: Purpose,
}

fn decode<M: Message + Default>(tree: &'static str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt { tree, detail: e.to_string() })
}

/// The sealed fields of one record of `tree`, their owner (the profile name), and a way to
/// encode the record again.
fn with_sealed_fields<R>(
    tree: SealedTree,
    key: &[u8],
    bytes: &[u8],
    visit: impl FnOnce(&str, &mut [SealedField<'_>]) -> R,
) -> Result<(R, Vec<u8>), StoreError> {
    match tree {
        SealedTree::Profiles => {
            let mut record: ProfileRecord = decode("profiles", bytes)?;
            let owner = record.name.clone();
            let out = visit(
                &owner,
                &mut [SealedField { bytes: &mut record.client_secret_sealed, purpose: Purpose::ClientSecret }],
            );
            Ok((out, record.encode_to_vec()))
        }
        SealedTree::Connections => {
            let mut record: ConnectionRecord = decode("connections", bytes)?;
            // A re-sealed connection is a new version: a writer that read it before (a refresh in
            // flight) then fails its compare-and-swap and retries on the re-sealed record,
            // instead of writing back values sealed under a key about to be dropped.
            record.version += 1;
            let owner = String::from_utf8_lossy(key).into_owned();
            let out = visit(
                &owner,
                &mut [
                    SealedField { bytes: &mut record.access_token_sealed, purpose: Purpose::AccessToken },
                    SealedField { bytes: &mut record.refresh_token_sealed, purpose: Purpose::RefreshToken },
                ],
            );
            Ok((out, record.encode_to_vec()))
        }
        SealedTree::Consents => {
            let mut record: ConsentRecord = decode("consents", bytes)?;
            let owner = record.profile.clone();
            let out = visit(
                &owner,
                &mut [SealedField { bytes: &mut record.pkce_verifier_sealed, purpose: Purpose::PkceVerifier }],
            );
            Ok((out, record.encode_to_vec()))
        }
    }
}

const SEALED_TREES: [SealedTree; 3] = [SealedTree::Profiles, SealedTree::Connections, SealedTree::Consents];

/// Counts the sealed values of the store per key id (the canary included).
fn usage_of(store: &dyn Store) -> Result<KeyUsage, StoreError> {
    let mut usage = KeyUsage::new();
    for tree in SEALED_TREES {
        store.rewrite_records(tree, &mut |key, bytes| {
            with_sealed_fields(tree, key, bytes, |_, fields| {
                for field in fields.iter().filter(|f| !f.bytes.is_empty()) {
                    if let Some(id) = KeyRing::sealed_key_id(field.bytes) {
                        *usage.entry(id).or_default() += 1;
                    }
                }
            })?;
            Ok(None)
        })?;
    }
    if let Some(id) = store.meta(CANARY_META_KEY)?.as_deref().and_then(KeyRing::sealed_key_id) {
        *usage.entry(id).or_default() += 1;
    }
    Ok(usage)
}

/// One pass: re-seals every value not under the active key. Returns (records re-sealed,
/// values that did not open).
fn reseal_pass(store: &dyn Store, keys: &KeyRing) -> Result<(u64, u64), StoreError> {
    let active = keys.active_id();
    let (mut resealed, mut unreadable) = (0, 0);
    for tree in SEALED_TREES {
        let done = store.rewrite_records(tree, &mut |key, bytes| {
            let (changed, encoded) = with_sealed_fields(tree, key, bytes, |owner, fields| {
                let mut changed = false;
                for field in fields.iter_mut().filter(|f| !f.bytes.is_empty()) {
                    if KeyRing::sealed_key_id(field.bytes) == Some(active) {
                        continue;
                    }
                    match keys.open(field.purpose, owner, field.bytes) {
                        Ok(plain) => {
                            match keys.seal(field.purpose, owner, &plain) {
                                Ok(sealed) => {
                                    *field.bytes = sealed;
                                    changed = true;
                                }
                                // Left as it is (still sealed under its old key) and counted.
                                Err(_) => unreadable += 1,
                            }
                        }
                        Err(_) => unreadable += 1,
                    }
                }
                changed
            })?;
            Ok(changed.then_some(encoded))
        })?;
        resealed += done.replaced;
    }
    if let Some(sealed) = store.meta(CANARY_META_KEY)?
        && KeyRing::sealed_key_id(&sealed) != Some(active)
    {
        match keys.open(Purpose::Canary, "", &sealed) {
            Ok(plain) if plain.as_slice() == CANARY_TEXT => {
                let canary =
                    keys.seal(Purpose::Canary, "", CANARY_TEXT).map_err(|e| StoreError::Engine(e.to_string()))?;
                store.set_meta(CANARY_META_KEY, &canary)?;
                resealed += 1;
            }
            _ => unreadable += 1,
        }
    }
    Ok((resealed, unreadable))
}

impl Admin {
    /// Sealed values per key id (a full scan of the store; runs on the blocking pool).
    pub async fn key_usage(&self) -> Result<KeyUsage, AdminError> {
        let store = std::sync::Arc::clone(self.engine.store());
        tokio::task::spawn_blocking(move || usage_of(store.as_ref()))
            .await
            .map_err(|e| EngineError::Storage(StoreError::Engine(format!("key usage scan: {e}"))))?
            .map_err(AdminError::from)
    }

    /// The ids of the keys in the ring and the active one.
    pub fn key_ids(&self) -> (u32, Vec<u32>) {
        (self.engine.keys().active_id(), self.engine.keys().ids())
    }

    /// Checks that `ring` (reloaded from the configuration) holds every key that still seals a
    /// stored value, so installing it loses nothing. The active key always seals the canary, so
    /// it can never be dropped in one step.
    pub async fn check_keys(&self, ring: &KeyRing) -> Result<(), KeyReloadError> {
        if ring.ids() == self.engine.keys().ids() {
            return Ok(());
        }
        let usage = self.key_usage().await?;
        let ids = ring.ids();
        match usage.iter().find(|(id, _)| !ids.contains(id)) {
            Some((&id, &values)) => Err(KeyReloadError::KeyStillInUse { id, values }),
            None => Ok(()),
        }
    }

    /// Installs a key ring that passed [`Admin::check_keys`]: new values are sealed under its
    /// active key from now on.
    pub fn install_keys(&self, ring: KeyRing) {
        let keys = self.engine.keys();
        if ring.ids() != keys.ids() || ring.active_id() != keys.active_id() {
            tracing::info!(active = %format_args!("{:08x}", ring.active_id()), keys = ring.ids().len(), "key ring reloaded");
            keys.replace(ring);
        }
    }

    /// Re-seals every stored secret that is not under the active key, in passes, until none is
    /// left or the passes run out; durable when it returns.
    pub async fn reseal_all(&self) -> Result<ResealReport, AdminError> {
        let store = std::sync::Arc::clone(self.engine.store());
        let keys = std::sync::Arc::clone(self.engine.keys());
        let report = tokio::task::spawn_blocking(move || -> Result<ResealReport, StoreError> {
            let mut report = ResealReport { active: keys.active_id(), ..ResealReport::default() };
            for pass in 1..=RESEAL_PASSES {
                let (resealed, unreadable) = reseal_pass(store.as_ref(), &keys)?;
                report.resealed += resealed;
                report.unreadable = unreadable;
                tracing::debug!(pass, resealed, unreadable, "re-seal pass");
                // A pass that found nothing to do is the last; one that did work runs again for
                // records a concurrent writer raced (it copied an old value or won the swap).
                if resealed == 0 {
                    break;
                }
            }
            store.flush()?;
            report.usage = usage_of(store.as_ref())?;
            Ok(report)
        })
        .await
        .map_err(|e| EngineError::Storage(StoreError::Engine(format!("re-seal task: {e}"))))?
        .map_err(AdminError::from)?;
        tracing::info!(
            active = %format_args!("{:08x}", report.active),
            resealed = report.resealed,
            unreadable = report.unreadable,
            "secrets re-sealed under the active key"
        );
        Ok(report)
    }
}
