//! End-to-end load harness (being written).
fn main() {}
