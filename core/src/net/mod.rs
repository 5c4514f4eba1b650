//! Low-level pieces of HTTP plumbing shared by the HTTP edge
//! ([`crate::http`]), the provider proxy ([`crate::proxy`]), local agent
//! backends ([`crate::agent`]) and OAuth connections
//! ([`crate::connections`]). Each is written once, here, below all of
//! them: nothing in this module uses another module of the crate.
//!
//! - [`client`]: who the client is — the peer, whether a request was
//!   relayed, whether it comes from the host itself, and its address
//!   behind trusted proxies (`X-Forwarded-For`);
//! - [`headers`]: header names as backends read them, the hop-by-hop and
//!   reserved names, the bearer token and the API-key header;
//! - [`cookie`]: the one `Cookie` header parser;
//! - [`path`]: the check of a client's path below an upstream (SSRF);
//! - [`upstream`]: `upstream = …` and `ca_file = …` of the
//!   configuration, parsed and read;
//! - [`tls`]: the one rustls client configuration for outbound HTTPS;
//! - [`body`]: draining what a client is still sending, and the streaming
//!   wrapper of an upstream's answer (idle timeout, hooks);
//! - [`error`]: an error and its causes, for the log;
//! - [`histogram`]: the latency buckets of `/metrics`;
//! - [`wsframe`]: WebSocket framing read as it passes (relays of agent
//!   WebSockets and realtime provider sessions).

pub mod body;
pub mod client;
pub mod cookie;
pub mod error;
pub mod headers;
pub mod histogram;
pub mod path;
pub mod tls;
pub mod upstream;
pub mod wsframe;
