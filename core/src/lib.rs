//! Latchkey's core: the vault, its storage, and (in later modules) auth and
//! the agent proxy. Both shells — the `latchkey` appliance and the desktop
//! app — are thin wrappers around this crate. It knows nothing of the CLI,
//! of Tauri, or of where its master key comes from beyond the
//! [`vault::MasterKeySource`] it is handed.

pub mod agent;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod config;
pub mod connections;
/// For `core/fuzz/` only: crate-private parsers, behind the off-by-default
/// `fuzzing` feature.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod proxy;
pub mod serve;
pub mod store;
pub mod vault;

pub use age::secrecy;
