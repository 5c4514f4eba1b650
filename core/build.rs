//! Records when this crate was built (or `SOURCE_DATE_EPOCH` for
//! reproducible builds), so the server can tell when its clock is visibly
//! wrong: a clock before the build time certainly is.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let t = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    println!("cargo:rustc-env=LATCHKEY_BUILD_UNIX={t}");
}
