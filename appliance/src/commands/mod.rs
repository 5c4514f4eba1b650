//! One module per command family; each returns `anyhow::Result` and prints
//! its own output. Errors are printed once, by `main`.

pub mod auth;
pub mod backup;
pub mod config;
pub mod import;
pub mod rotate;
pub mod self_check;
pub mod service;
pub mod store;
pub mod vault;
