//! End-to-end tests: every test drives the real `latchkey` binary the way a
//! user or a script would. One test binary for all of them keeps link times
//! down.

mod agent;
mod auth_attacks;
mod auth_flow;
mod auth_permissions;
mod backup;
mod connections;
mod crash;
mod deb;
mod desktop;
mod fixtures;
mod forward_auth;
mod hardening_connections;
mod hardening_edge;
mod hardening_privilege;
mod hardening_races;
mod hardening_resources;
mod hardening_review;
mod hardening_vault_proxy;
mod integrity;
mod key_sources;
mod leaks;
mod proxy;
mod proxy_limits;
mod reverse_proxy;
mod security_doc;
mod serve;
mod serve_robustness;
mod serve_tls;
mod service_notify;
mod service_unit;
mod syscall_filter;
mod ui;
mod update;
mod vault_cli;
