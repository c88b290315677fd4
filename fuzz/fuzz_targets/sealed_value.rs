//! Fuzz target `sealed_value`: feeds arbitrary bytes to [`checks::sealed_value`], which asserts the invariants
//! (shared with `tests/it/fuzz_corpus.rs`, which replays the corpus in `cargo test`).
#![no_main]

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::sealed_value(data));
