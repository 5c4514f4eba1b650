//! Records when this crate was built (or `SOURCE_DATE_EPOCH` for
//! reproducible builds), so the server can tell when its clock is visibly
//! wrong: a clock before the build time certainly is. Also records the
//! version this build calls itself: `LATCHKEY_VERSION` when set (how
//! `packaging/release.sh` builds the current tree under a release's
//! version), else the crate's version.

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
    println!("cargo:rerun-if-env-changed=LATCHKEY_VERSION");
    let version = std::env::var("LATCHKEY_VERSION")
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| std::env::var("CARGO_PKG_VERSION").unwrap_or_default());
    println!("cargo:rustc-env=LATCHKEY_VERSION={version}");
    // The platform the update channel picks artifacts for.
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rustc-env=LATCHKEY_TARGET={target}");
}
