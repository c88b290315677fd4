//! tokend keeps OAuth 2.0 tokens for "connected apps" valid and hands them out over gRPC.
//!
//! The map of the crate, one module per part of the design; `docs/architecture.md` draws who may
//! call whom, the two data paths (hand-out and refresh) and the invariants.
//! - [`engine`]: the refresh engine: the token cache and the hand-out path, single-flight refresh,
//!   the versioned write that publishes only what is durable, the scheduler and its policy (skew,
//!   jitter, backoff), group commit, per-provider rate limits, and the engine's counters.
//! - [`admin`]: administration on top of the engine: profiles, consents (authorization code with
//!   PKCE, device grant, client credentials), disconnect with revocation, key rotation.
//! - [`store`]: the narrow storage trait, its sled backend, the contract suite every backend runs,
//!   and the backend-neutral backup format.
//! - [`provider`]: the OAuth 2.0 protocol client (oauth2 crate over our own HTTP layer), provider
//!   presets, lenient token-reply parsing, endpoint rules and the deny-list.
//! - [`profile`]: profile validation, provider-settings resolution, the API view of a profile.
//! - [`crypto`]: the key ring that seals secrets at rest (XChaCha20-Poly1305, key ids, AAD).
//! - [`clock`]: time and jitter as parameters, so tests drive expiry without sleeping.
//! - [`grpc`]: the gRPC services (one file each), the request layer (authentication, metrics,
//!   failed-authentication limit), TLS, and the one table from errors to status codes.
//! - [`http`]: the HTTP listener: the landing page, OAuth callback, health, readiness, metrics.
//! - [`web`]: the Connected apps landing page: sessions in sealed cookies, CSRF, askama
//!   templates, embedded assets, live updates; a view over the same operations as [`grpc`].
//! - [`metrics`]: the Prometheus registry; gauges set from an engine snapshot at scrape time.
//! - [`access`]: callers, roles, the failed-authentication limit and the audit trail (admin
//!   actions one by one, token hand-outs tallied and written every few seconds), shared by every
//!   surface.
//! - [`config`]: the typed configuration and its layered sources (defaults, file, env, flags).
//! - [`declared`]: profiles declared in the configuration file, reconciled at start and on SIGHUP.
//! - [`daemon`]: start-up in named steps (storage, TLS, listeners, engine, serving), shutdown,
//!   reload, backup and restore of a stopped daemon's store.
//! - [`client`]: what every gRPC client of tokend shares: the bearer-token interceptor.
//! - [`api`]: the generated `tokend.v1` contract and redacting `Debug` for secret-carrying messages.
//! - [`telemetry`]: logging setup (text on a terminal, JSON otherwise).
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod api;
pub mod client;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod declared;
pub mod engine;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod profile;
pub mod provider;
pub mod store;
pub mod telemetry;
pub mod web;

/// The allocator of every binary built on this library (the daemon, `tokenctl`, the tests and
/// the benchmarks, so they measure what ships): mimalloc instead of the system's. A refresh
/// allocates and frees many short-lived buffers (records, sealed secrets, HTTP messages) on
/// several threads; under glibc's allocator that was about 20 % of the daemon's CPU during a
/// refresh wave, and its per-thread arenas grew the daemon's memory after one (see
/// docs/performance.md). `.cargo/config.toml` builds it without eager commit of its arenas,
/// which kept an idle daemon's RSS three times larger.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
