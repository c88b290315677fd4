//! The in-memory token cache: what `GetAccessToken` reads on its hot path. One slot per profile,
//! in a sharded map (no global lock); a slot's state is swapped atomically, so readers never
//! wait, never touch the store and never decrypt.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use secrecy::SecretString;
use tokio::sync::{Mutex, watch};
use zeroize::Zeroizing;

use crate::api::pb;
use crate::clock::UnixMillis;

/// A decrypted access token ready to hand out. Held behind an `Arc` in the slot and handed out
/// as that `Arc`, so a hand-out neither copies nor zeroizes the token: it is zeroized once, when
/// the last holder drops it after the slot moved on to a newer token.
pub struct HotToken {
    /// The token.
    pub access_token: SecretString,
    /// Its type, e.g. "Bearer".
    pub token_type: String,
    /// When it expires.
    pub expires_at_ms: UnixMillis,
    /// When it was issued (0: unknown); with `expires_at_ms`, the lifetime the provider granted.
    pub issued_at_ms: UnixMillis,
    /// Granted scopes.
    pub scopes: Arc<[String]>,
    /// Grows with every new token of the profile.
    pub token_version: u64,
    /// This token's reply as the gRPC surface encodes it, made by the first watch stream that
    /// sends it and copied by the others: a refresh fans out to thousands of streams of one
    /// profile, which would otherwise each build and encode the same message (#17). Holds the
    /// token, so it is zeroized with it.
    pub wire: OnceLock<WireReply>,
}

/// A token's reply, encoded ([`HotToken::wire`]).
pub struct WireReply {
    /// The profile name the reply carries.
    pub name: Box<str>,
    /// The encoded message.
    pub bytes: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for HotToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotToken")
            .field("expires_at_ms", &self.expires_at_ms)
            .field("token_version", &self.token_version)
            .finish_non_exhaustive()
    }
}

/// What a slot knows: the freshest token (if any), the status, and until when a failing
/// connection is backing off (callers then get the held token instead of a new attempt).
#[derive(Debug, Clone)]
pub struct SlotState {
    /// The freshest access token held (shared with the callers it was handed to).
    pub token: Option<Arc<HotToken>>,
    /// The connection status.
    pub status: pb::Status,
    /// No on-demand refresh before this time (transient failures back off).
    pub backoff_until_ms: UnixMillis,
    /// Whether a refresh can renew the token (a refresh token is held, or the grant is client
    /// credentials). When it cannot, callers get the held token until it expires, and no
    /// refresh is attempted for them.
    pub renewable: bool,
    /// The version of the stored connection this state stands for: the cache only ever moves to
    /// a newer one, so a writer that publishes late cannot undo a later write.
    pub version: u64,
}

impl Default for SlotState {
    fn default() -> Self {
        Self { token: None, status: pb::Status::NotConnected, backoff_until_ms: 0, renewable: true, version: 0 }
    }
}

/// How the one refresh in flight ended, as seen by those who waited on it.
pub type FlightOutcome = Result<(), Arc<super::EngineError>>;

/// One profile's cache entry.
#[derive(Debug)]
pub struct Slot {
    /// Swapped whole on every change, read without locking.
    pub state: ArcSwap<SlotState>,
    /// The refresh in flight, if any: its waiters subscribe to this channel. Held only while
    /// deciding whether to join or start one, and while a finished refresh leaves the slot and
    /// gives out its outcome; never across the refresh itself.
    pub flight: Mutex<Option<watch::Receiver<Option<FlightOutcome>>>>,
}

impl Slot {
    fn new(state: SlotState) -> Self {
        Self { state: ArcSwap::from_pointee(state), flight: Mutex::new(None) }
    }
}

/// Every profile's slot.
#[derive(Debug, Default)]
pub struct TokenCache {
    /// Hashed with foldhash (seeded per process), not SipHash: every hand-out looks a name up
    /// here, names are chosen by admins, and foldhash costs a fraction of SipHash (#17).
    slots: DashMap<String, Arc<Slot>, foldhash::fast::RandomState>,
}

impl TokenCache {
    /// The slot of a profile, if the profile exists.
    pub fn get(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots.get(name).map(|s| Arc::clone(&s))
    }

    /// The slot of a profile, loading its state with `load` when it is not cached yet. `load`
    /// runs under the map's lock for that name, so a load from the store cannot undo a
    /// concurrent publish or delete (both go through the same lock after the store write).
    pub fn get_or_load(&self, name: &str, load: impl FnOnce() -> Option<SlotState>) -> Option<Arc<Slot>> {
        if let Some(slot) = self.get(name) {
            return Some(slot);
        }
        match self.slots.entry(name.to_owned()) {
            dashmap::Entry::Occupied(slot) => Some(Arc::clone(slot.get())),
            dashmap::Entry::Vacant(vacant) => {
                let state = load()?;
                Some(Arc::clone(&vacant.insert(Arc::new(Slot::new(state)))))
            }
        }
    }

    /// Sets a profile's state, creating its slot if needed, unless the slot already shows a
    /// newer version of the connection (a write published late loses to a later one).
    pub fn set(&self, name: &str, state: SlotState) {
        let state = Arc::new(state);
        match self.slots.get(name) {
            Some(slot) => {
                slot.state.rcu(
                    |current| if state.version >= current.version { Arc::clone(&state) } else { Arc::clone(current) },
                );
            }
            None => {
                self.slots
                    .entry(name.to_owned())
                    .or_insert_with(|| Arc::new(Slot { state: ArcSwap::new(state), flight: Mutex::new(None) }));
            }
        }
    }

    /// Forgets a deleted profile.
    pub fn remove(&self, name: &str) {
        self.slots.remove(name);
    }

    /// How many profiles are in each status.
    pub fn status_counts(&self) -> std::collections::HashMap<pb::Status, usize> {
        let mut counts = std::collections::HashMap::new();
        for slot in self.slots.iter() {
            *counts.entry(slot.state.load().status).or_insert(0) += 1;
        }
        counts
    }

    /// (profile, expiry) of held tokens, the first `limit` by name.
    pub fn token_expiries(&self, limit: usize) -> Vec<(String, UnixMillis)> {
        let mut all: Vec<(String, UnixMillis)> = self
            .slots
            .iter()
            .filter_map(|slot| slot.state.load().token.as_ref().map(|t| (slot.key().clone(), t.expires_at_ms)))
            .collect();
        all.sort_unstable();
        all.truncate(limit);
        all
    }

    /// The names of every cached profile.
    pub fn names(&self) -> Vec<String> {
        self.slots.iter().map(|slot| slot.key().clone()).collect()
    }

    /// Number of profiles cached.
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A missing slot is loaded once; a present one is never reloaded (a stale load cannot undo
    /// a publish), and a load that finds nothing leaves no slot behind.
    #[test]
    fn get_or_load_fills_only_missing_slots() {
        let cache = TokenCache::default();
        assert!(cache.get_or_load("gone", || None).is_none());
        assert!(cache.get("gone").is_none());
        let connected = SlotState { status: pb::Status::Connected, ..SlotState::default() };
        let slot = cache.get_or_load("mail", || Some(connected.clone())).unwrap();
        assert_eq!(slot.state.load().status, pb::Status::Connected);
        cache.set("mail", SlotState { status: pb::Status::RefreshFailing, ..SlotState::default() });
        let again = cache.get_or_load("mail", || panic!("a cached slot is not loaded again")).unwrap();
        assert_eq!(again.state.load().status, pb::Status::RefreshFailing);
    }
}
