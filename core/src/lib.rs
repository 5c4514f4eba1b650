//! Latchkey's core: the vault, its storage, auth, the agent proxy, and the
//! app's whole lifecycle ([`app`]: open, background tasks, serving with
//! [`serve`] on listeners it is given, ordered shutdown). Both shells — the
//! `latchkey` appliance and the desktop app — are thin wrappers around this
//! crate. It knows nothing of the CLI, of Tauri, of certificates (a shell
//! hands [`serve`] a rustls configuration, or none for plain HTTP), or of
//! where its master key comes from beyond the [`vault::MasterKeySource`] it
//! is handed.

pub mod agent;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod config;
pub mod connections;
pub mod duration_str;
/// For `core/fuzz/` only: crate-private parsers, behind the off-by-default
/// `fuzzing` feature.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
#[cfg(test)]
mod layers_tests;
pub mod livekit;
pub mod net;
pub mod private_fs;
pub mod proxy;
pub mod serve;
pub mod store;
pub mod update;
pub mod vault;

pub use age::secrecy;
