//! Rebuilds the crate when anything under `web/` changes, including files
//! that are added (the embed macro alone only tracks files it already saw).
fn main() {
    println!("cargo:rerun-if-changed=web");
}
