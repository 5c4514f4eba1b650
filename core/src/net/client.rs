//! Who the client is: the socket peer, whether the request was relayed,
//! whether it comes from the host itself, and its address behind the
//! reverse proxies listed in `auth.trusted_proxies`.
//!
//! Security-critical (docs/SECURITY.md): [`from_host`] is the one rule for
//! "local" (the host's admin token, `/metrics` in `loopback` mode), and
//! `X-Forwarded-For` is believed only as far as trusted proxies wrote it.
//! The HTTP layer calls these through `crate::http::authn`, which holds
//! the configured list.

use crate::net::headers::canonical_name;
use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The peer's address (set by the server's accept loop), if known.
pub fn peer(ext: &Extensions) -> Option<SocketAddr> {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(p)| *p)
}

/// Whether the socket peer is loopback. Only [`from_host`] may use this: a
/// loopback peer alone is not the host (a reverse proxy on the host is
/// loopback too).
fn is_loopback(peer: &SocketAddr) -> bool {
    match peer.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        // `::ffff:127.0.0.1` from a dual-stack socket is loopback too.
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Headers only a relay (reverse proxy, load balancer, CDN, tunnel) adds
/// to say whom it acts for. Compared by their canonical spelling
/// ([`canonical_name`]), so `X_Forwarded_For` counts too. Beyond these
/// names, every `X-Forwarded…` header and every name that ends like an
/// address (`…-ip`, `…-ipv6`, `…-addr`, `…-address`: `X-Real-IP`,
/// `Client-IP`, `X-Originating-IP`, `X-Remote-Addr`,
/// `X-Envoy-External-Address`, `CF-Connecting-IPv6`, …) counts, so a
/// relay's dialect we did not list still loses host authority.
const RELAY_HEADERS: [&str; 4] = [
    "forwarded",
    "via",
    "x-original-forwarded-for",
    "x-original-host",
];

/// Address-like suffixes of relay headers (see [`RELAY_HEADERS`]).
const RELAY_SUFFIXES: [&str; 4] = ["-ip", "-ipv6", "-addr", "-address"];

/// Whether a (canonical) header name is one a relay adds.
fn is_relay_header(canonical: &str) -> bool {
    canonical.starts_with("x-forwarded")
        || RELAY_HEADERS.contains(&canonical)
        || RELAY_SUFFIXES.iter().any(|s| canonical.ends_with(s))
}

/// Whether the request's peer (the socket, not a header) is one of
/// `trusted` (IPv4-mapped addresses count as IPv4).
pub fn from_trusted_proxy(trusted: &[IpNet], ext: &Extensions) -> bool {
    peer(ext).is_some_and(|p| {
        let ip = p.ip().to_canonical();
        trusted.iter().any(|net| net.contains(&ip))
    })
}

/// Whether the request was relayed: it carries any forwarding header
/// (`Forwarded`, `Via`, `X-Forwarded-*`, `X-Real-IP`, … in any spelling),
/// or its peer is one of `trusted` (a proxy may forward without saying
/// so).
pub fn relayed(trusted: &[IpNet], headers: &HeaderMap, ext: &Extensions) -> bool {
    let by_header = headers
        .keys()
        .any(|name| is_relay_header(&canonical_name(name.as_str())));
    by_header || from_trusted_proxy(trusted, ext)
}

/// Whether the request comes from the host itself, with the authority
/// that gives (the admin token, `/metrics` in `loopback` mode): a
/// loopback peer **and** not relayed. A reverse proxy on the same host
/// connects from loopback on behalf of anyone on the network, so a
/// relayed request never has host authority, whatever its peer address.
/// This is the one place that decides "local"; no handler looks at the
/// peer address for that itself.
pub fn from_host(trusted: &[IpNet], headers: &HeaderMap, ext: &Extensions) -> bool {
    peer(ext).is_some_and(|p| is_loopback(&p)) && !relayed(trusted, headers, ext)
}

/// The client's address for rate limits and the audit log: the peer, or
/// what a trusted proxy says in `X-Forwarded-For`
/// ([`forwarded_client`]).
pub fn client_ip(trusted: &[IpNet], headers: &HeaderMap, ext: &Extensions) -> IpAddr {
    client_ip_of(trusted, headers, peer(ext))
}

/// [`client_ip`] for a request whose socket peer is already known (the
/// proxy's short path is handed it, not an extension).
pub fn client_ip_of(trusted: &[IpNet], headers: &HeaderMap, peer: Option<SocketAddr>) -> IpAddr {
    let Some(peer) = peer else {
        // No socket (handler tests): one shared bucket.
        return IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    };
    let xff: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let joined = xff.join(",");
    forwarded_client(peer, (!xff.is_empty()).then_some(joined.as_str()), trusted)
}

/// Most `X-Forwarded-For` entries examined; a longer chain of trusted
/// proxies is not plausible, and the bound caps the work per request.
pub const MAX_FORWARDED_HOPS: usize = 32;

/// The client address of a request that arrived from `peer`.
///
/// `X-Forwarded-For` is believed only as far as it was written by proxies
/// we trust: when `peer` is in `trusted_proxies`, the list is walked from
/// the right (the entry our proxy appended) and each trusted hop is
/// skipped; the first untrusted address is the client. Entries to its left
/// were written by the client and are ignored, so a client cannot spoof
/// its address by sending the header itself. An unparsable entry stops the
/// walk at the last address known. If several `X-Forwarded-For` headers
/// arrived, pass them joined with `,` in order.
///
/// Entries may be bare addresses, `1.2.3.4:port`, `[v6]` or `[v6]:port`.
/// IPv4-mapped IPv6 addresses are returned (and matched) as IPv4.
pub fn forwarded_client(
    peer: SocketAddr,
    x_forwarded_for: Option<&str>,
    trusted_proxies: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    let mut client = peer.ip().to_canonical();
    let Some(xff) = x_forwarded_for else {
        return client;
    };
    if !is_trusted(&client) {
        return client;
    }
    for entry in xff.rsplit(',').take(MAX_FORWARDED_HOPS) {
        match parse_forwarded(entry.trim()) {
            Some(ip) => client = ip.to_canonical(),
            None => return client,
        }
        if !is_trusted(&client) {
            return client;
        }
    }
    client
}

fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    entry
        .strip_prefix('[')?
        .strip_suffix(']')?
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("net")).collect()
    }

    #[test]
    fn relay_headers_in_every_dialect_and_spelling() {
        for name in [
            "Forwarded",
            "Via",
            "X-Forwarded-For",
            "X_Forwarded_Host",
            "X-Forwarded",
            "X-Real-IP",
            "X-Client-IP",
            "True-Client-IP",
            "CF-Connecting-IP",
            "CF-Connecting-IPv6",
            "Fastly-Client-IP",
            "X-Cluster-Client-IP",
            "X-ProxyUser-Ip",
            "X-Originating-IP",
            "X-Remote-Addr",
            "X-Remote-IP",
            "Client-IP",
            "X-Envoy-External-Address",
            "x.real.ip",
            "X-Original-Forwarded-For",
        ] {
            assert!(is_relay_header(&canonical_name(name)), "{name}");
        }
        for name in [
            "Accept",
            "Authorization",
            "Content-Type",
            "X-Request-Id",
            "Origin",
            "Zip",
        ] {
            assert!(!is_relay_header(&canonical_name(name)), "{name}");
        }
    }

    #[test]
    fn loopback_peers() {
        for p in ["127.0.0.1:1", "[::1]:1", "[::ffff:127.0.0.1]:1"] {
            assert!(is_loopback(&p.parse().expect("addr")), "{p}");
        }
        for p in ["10.0.0.1:1", "[fe80::1]:1", "[::ffff:10.0.0.1]:1"] {
            assert!(!is_loopback(&p.parse().expect("addr")), "{p}");
        }
    }

    /// The host is a loopback peer that relays for no one: a forwarding
    /// header in any spelling, or a trusted proxy as the peer, takes host
    /// authority away.
    #[test]
    fn only_an_unrelayed_loopback_peer_is_the_host() {
        let ext = |addr: &str| {
            let mut e = Extensions::new();
            e.insert(ConnectInfo(sa(addr)));
            e
        };
        let none = HeaderMap::new();
        let mut xff = HeaderMap::new();
        xff.insert("x_real_ip", "203.0.113.9".parse().expect("hv"));
        let trusted = nets(&["127.0.0.1/32"]);
        assert!(from_host(&[], &none, &ext("127.0.0.1:5000")));
        assert!(from_host(&[], &none, &ext("[::1]:5000")));
        assert!(!from_host(&[], &xff, &ext("127.0.0.1:5000")));
        assert!(!from_host(&trusted, &none, &ext("127.0.0.1:5000")));
        assert!(!from_host(&[], &none, &ext("10.0.0.1:5000")));
        assert!(!from_host(&[], &none, &Extensions::new()), "no socket");
        // The client address: the peer unless a trusted proxy speaks.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6".parse().expect("hv"));
        h.append("x-forwarded-for", "198.51.100.4".parse().expect("hv"));
        assert_eq!(
            client_ip(&trusted, &h, &ext("127.0.0.1:1")),
            ip("198.51.100.4")
        );
        assert_eq!(client_ip(&[], &h, &ext("127.0.0.1:1")), ip("127.0.0.1"));
        assert_eq!(
            client_ip(&trusted, &h, &Extensions::new()),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        );
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn untrusted_peer_cannot_spoof_with_xff() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            forwarded_client(sa("203.0.113.5:4000"), Some("1.1.1.1"), &trusted),
            ip("203.0.113.5")
        );
        assert_eq!(
            forwarded_client(sa("203.0.113.5:4000"), Some("1.1.1.1"), &[]),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_hop() {
        let trusted = nets(&["10.0.0.0/8", "fd00::/8"]);
        let peer = sa("10.0.0.2:443");
        assert_eq!(
            forwarded_client(peer, Some("198.51.100.4"), &trusted),
            ip("198.51.100.4")
        );
        // Attack: the client sends its own XFF; our proxy appends the real
        // address. The spoofed entry on the left is ignored.
        assert_eq!(
            forwarded_client(peer, Some("6.6.6.6, 198.51.100.4"), &trusted),
            ip("198.51.100.4")
        );
        // Several trusted hops are skipped.
        assert_eq!(
            forwarded_client(
                peer,
                Some("6.6.6.6,198.51.100.4, 10.1.1.1 ,fd00::5"),
                &trusted
            ),
            ip("198.51.100.4")
        );
        // Every hop trusted: the leftmost one is the client.
        assert_eq!(
            forwarded_client(peer, Some("10.9.9.9, 10.1.1.1"), &trusted),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn missing_empty_or_garbage_xff_falls_back_safely() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = sa("10.0.0.2:443");
        assert_eq!(forwarded_client(peer, None, &trusted), ip("10.0.0.2"));
        assert_eq!(forwarded_client(peer, Some(""), &trusted), ip("10.0.0.2"));
        assert_eq!(
            forwarded_client(peer, Some("unknown"), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            forwarded_client(peer, Some("198.51.100.4, garbage, 10.1.1.1"), &trusted),
            ip("10.1.1.1")
        );
        assert_eq!(
            forwarded_client(peer, Some("198.51.100.4, fe80::1%eth0"), &trusted),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn ports_brackets_and_mapped_addresses() {
        let trusted = nets(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        let peer = sa("10.0.0.2:443");
        assert_eq!(
            forwarded_client(peer, Some("198.51.100.4:5555"), &trusted),
            ip("198.51.100.4")
        );
        assert_eq!(
            forwarded_client(peer, Some("[2001:db8::9]:80"), &trusted),
            ip("2001:db8::9")
        );
        assert_eq!(
            forwarded_client(peer, Some("[2001:db8::9]"), &trusted),
            ip("2001:db8::9")
        );
        assert_eq!(
            forwarded_client(peer, Some("::ffff:198.51.100.4"), &trusted),
            ip("198.51.100.4")
        );
        // A dual-stack listener reports an IPv4 proxy as IPv4-mapped IPv6.
        assert_eq!(
            forwarded_client(sa("[::ffff:10.0.0.2]:443"), Some("198.51.100.4"), &trusted),
            ip("198.51.100.4")
        );
        assert_eq!(
            forwarded_client(
                sa("[2001:db8:ffff:1::1]:443"),
                Some("198.51.100.4"),
                &trusted
            ),
            ip("198.51.100.4")
        );
    }

    #[test]
    fn huge_xff_chain_is_bounded() {
        let trusted = nets(&["10.0.0.0/8"]);
        let chain = vec!["10.0.0.1"; 10_000].join(",");
        let got = forwarded_client(
            sa("10.0.0.2:443"),
            Some(&format!("6.6.6.6,{chain}")),
            &trusted,
        );
        assert_eq!(got, ip("10.0.0.1"), "stops after {MAX_FORWARDED_HOPS} hops");
    }

    #[test]
    fn random_xff_never_panics_and_untrusted_peer_always_wins() {
        let mut rng = StdRng::seed_from_u64(9);
        let trusted = nets(&["10.0.0.0/8"]);
        for _ in 0..2000 {
            let len = rng.gen_range(0..80);
            let xff: String = (0..len)
                .map(|_| char::from(b"0123456789.:,[] abcdef%"[rng.gen_range(0..23)]))
                .collect();
            let _ = forwarded_client(sa("10.0.0.2:1"), Some(&xff), &trusted);
            assert_eq!(
                forwarded_client(sa("192.0.2.1:1"), Some(&xff), &trusted),
                ip("192.0.2.1")
            );
        }
    }
}
