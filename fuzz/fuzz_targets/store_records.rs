//! Fuzz target `store_records`: feeds arbitrary bytes to [`checks::store_records`], which asserts the invariants
//! (shared with `tests/it/fuzz_corpus.rs`, which replays the corpus in `cargo test`).
#![no_main]

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::store_records(data));
