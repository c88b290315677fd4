//! tokend's integration tests, one test binary with a module per area (the suite links once and
//! the helpers in [`support`] are shared). Every test starts what it needs on its own: the
//! daemon in-process on 127.0.0.1 port 0, or the real binaries as child processes; none depends
//! on another's order. Run one area with a filter: `cargo test --test it daemon::`.

// Test code: a failed step panics with its message, like a failed assertion. clippy.toml allows
// unwrap and expect in #[test] fns; this covers the helpers they call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod binary;
mod config_env;
mod crash;
mod daemon;
mod fuzz_corpus;
mod grants;
mod hardening;
pub mod interop;
mod keys_backup;
mod log_scan;
mod postgres;
mod refresh_edges;
mod request_layer;
mod roles;
mod security;
mod security_rules;
mod support;
mod tokenctl;
pub mod web;
mod web_browser;
