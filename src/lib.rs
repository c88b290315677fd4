//! tokend keeps OAuth 2.0 tokens for "connected apps" valid and hands them out over gRPC.
//!
//! The map of the crate, one module per part of the design (`DESIGN.md`):
//! - [`config`]: the typed configuration and its layered sources (defaults, file, env, flags).
//! - [`api`]: the generated `tokend.v1` contract and redacting `Debug` for secret-carrying messages.
//! - [`audit`]: the audit trail: admin actions one by one, token hand-outs tallied and written
//!   every few seconds.
//! - [`client`]: what every gRPC client of tokend shares: the bearer-token interceptor.
//! - [`clock`]: time and jitter as parameters, so tests drive expiry without sleeping.
//! - [`crypto`]: the key ring that seals secrets at rest (XChaCha20-Poly1305, key ids, AAD).
//! - [`telemetry`]: logging setup (text on a terminal, JSON otherwise).
//! - [`store`]: the narrow storage trait and its sled implementation (profiles, connections,
//!   refresh index, pending consents, metadata).
//! - [`daemon`]: start-up (data directory, store, keys, canary, admin token) and shutdown.
//! - [`declared`]: profiles declared in the configuration file, reconciled at start and on SIGHUP.
//! - [`grpc`]: the gRPC services, caller authentication and roles, error-to-status table.
//! - [`http`]: the HTTP listener: OAuth callback, health, readiness, metrics.
//! - [`metrics`]: the Prometheus registry, filled at scrape time.
//! - [`profile`]: profile validation, API/record conversions, provider-settings resolution.
//! - [`core`]: the daemon state and operations: profiles, consents, the token cache, the
//!   single-flight refresh and its scheduler.
//! - [`provider`]: the OAuth 2.0 protocol client (oauth2 crate over our own HTTP layer), provider
//!   presets, lenient token-reply parsing, endpoint rules.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod audit;
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
