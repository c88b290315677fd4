//! Fuzz target `config_toml`: feeds arbitrary bytes to [`checks::config_toml`], which asserts the invariants
//! (shared with `tests/it/fuzz_corpus.rs`, which replays the corpus in `cargo test`).
#![no_main]

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::config_toml(data));
