//! `tokenctl`: the admin client (being written).
fn main() {}
