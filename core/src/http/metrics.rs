//! A small Prometheus registry: request counts by route template and
//! status, request latency histograms by route, vault operations by kind
//! and outcome, counters owned by the shell (e.g. TLS handshake
//! failures), and the agent proxy's per-provider counters (answers by
//! status class, upstream latency to the response head, tokens, limit
//! refusals; atomics owned by `crate::proxy::stats`, read only here).
//! Rendered in the Prometheus text exposition format 0.0.4.
//!
//! Every label comes from a bounded set, never from the raw request: routes
//! are labelled by their template (`/api/vault/{name}`, or `unmatched`),
//! never the raw path, so entry names stay out of the metrics; methods are
//! the nine of RFC 9110/5789 or `OTHER` ([`method_label`]) — a client may
//! send any token as a method, and each distinct one would otherwise be a
//! new series kept forever; statuses are numbers; providers are the
//! configured names.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::net::histogram::{self, BUCKETS};
use axum::http::Method;

/// The label of a request method: one of the standard methods, else
/// `OTHER`. Used for metrics and log lines alike, so a made-up method
/// (any token up to the header size limit) is never kept or echoed.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Most routes counted separately; later ones are counted as `other`.
/// Routes are the router's templates (a few dozen), so this only guards
/// against a future caller passing something unbounded.
const MAX_ROUTES: usize = 512;

#[derive(Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        self.counts[histogram::slot(secs)] += 1;
        self.sum += secs;
        self.count += 1;
    }
}

#[derive(Default)]
struct Inner {
    /// Route → (method, status, count).
    requests: BTreeMap<String, Vec<(&'static str, u16, u64)>>,
    latency: BTreeMap<String, Histogram>,
    vault_ops: BTreeMap<(&'static str, &'static str), u64>,
}

struct External {
    name: &'static str,
    help: &'static str,
    value: Arc<AtomicU64>,
}

/// The registry. Cheap to update (one short mutex hold per request).
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    external: Mutex<Vec<External>>,
    proxy: OnceLock<Arc<crate::proxy::Proxy>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Exposes a counter the shell owns (e.g. the TLS accept loop's
    /// handshake failures) as `name`.
    pub fn register_counter(&self, name: &'static str, help: &'static str, value: Arc<AtomicU64>) {
        if let Ok(mut ext) = self.external.lock() {
            ext.push(External { name, help, value });
        }
    }

    /// Counts one request. `route` must be a route template (or a fixed
    /// word such as `unmatched`), never anything the client wrote.
    pub fn observe_request(&self, method: &Method, route: &str, status: u16, latency: Duration) {
        let method = method_label(method);
        if let Ok(mut m) = self.inner.lock() {
            // Looked up by `&str` first: a route seen before costs no
            // allocation.
            let inner = &mut *m;
            let route = if inner.requests.contains_key(route) || inner.requests.len() < MAX_ROUTES {
                route
            } else {
                "other"
            };
            match inner.requests.get_mut(route) {
                Some(counts) => match counts
                    .iter_mut()
                    .find(|(m, s, _)| *m == method && *s == status)
                {
                    Some((_, _, n)) => *n += 1,
                    None => counts.push((method, status, 1)),
                },
                None => {
                    inner
                        .requests
                        .insert(route.to_string(), vec![(method, status, 1)]);
                }
            }
            let secs = latency.as_secs_f64();
            match inner.latency.get_mut(route) {
                Some(h) => h.observe(secs),
                None => {
                    let mut h = Histogram::default();
                    h.observe(secs);
                    inner.latency.insert(route.to_string(), h);
                }
            }
        }
    }

    /// Shows the proxy's per-provider counters (once; later calls are
    /// ignored).
    pub fn attach_proxy(&self, proxy: Arc<crate::proxy::Proxy>) {
        let _ = self.proxy.set(proxy);
    }

    /// Counts one vault operation (`put`, `reveal`, …) and whether it
    /// succeeded.
    pub fn vault_op(&self, op: &'static str, ok: bool) {
        if let Ok(mut m) = self.inner.lock() {
            *m.vault_ops
                .entry((op, if ok { "ok" } else { "error" }))
                .or_default() += 1;
        }
    }

    /// The text exposition; `sealed` is sampled by the caller.
    pub fn render(&self, sealed: bool) -> String {
        let mut out = String::new();
        // `write!` into a String cannot fail.
        let _ = self.render_into(&mut out, sealed);
        out
    }

    fn render_into(&self, out: &mut String, sealed: bool) -> std::fmt::Result {
        let m = match self.inner.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        writeln!(
            out,
            "# HELP latchkey_http_requests_total HTTP requests by method, route template and status."
        )?;
        writeln!(out, "# TYPE latchkey_http_requests_total counter")?;
        let mut requests: Vec<(&str, &str, u16, u64)> = m
            .requests
            .iter()
            .flat_map(|(route, counts)| {
                counts
                    .iter()
                    .map(move |(method, status, n)| (*method, route.as_str(), *status, *n))
            })
            .collect();
        requests.sort_unstable();
        for (method, route, status, n) in requests {
            writeln!(
                out,
                "latchkey_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(method),
                escape(route)
            )?;
        }
        writeln!(
            out,
            "# HELP latchkey_http_request_duration_seconds HTTP request latency by route template."
        )?;
        writeln!(
            out,
            "# TYPE latchkey_http_request_duration_seconds histogram"
        )?;
        for (route, h) in &m.latency {
            let route = escape(route);
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                writeln!(
                    out,
                    "latchkey_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                )?;
            }
            cumulative += h.counts[BUCKETS.len()];
            writeln!(
                out,
                "latchkey_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {cumulative}"
            )?;
            writeln!(
                out,
                "latchkey_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            )?;
            writeln!(
                out,
                "latchkey_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            )?;
        }
        writeln!(
            out,
            "# HELP latchkey_vault_operations_total Vault operations by kind and outcome."
        )?;
        writeln!(out, "# TYPE latchkey_vault_operations_total counter")?;
        for ((op, outcome), n) in &m.vault_ops {
            writeln!(
                out,
                "latchkey_vault_operations_total{{operation=\"{op}\",outcome=\"{outcome}\"}} {n}"
            )?;
        }
        drop(m);
        writeln!(
            out,
            "# HELP latchkey_vault_sealed 1 while the vault is sealed."
        )?;
        writeln!(out, "# TYPE latchkey_vault_sealed gauge")?;
        writeln!(out, "latchkey_vault_sealed {}", u8::from(sealed))?;
        let ext = match self.external.lock() {
            Ok(e) => e,
            Err(p) => p.into_inner(),
        };
        for e in ext.iter() {
            writeln!(out, "# HELP {} {}", e.name, e.help)?;
            writeln!(out, "# TYPE {} counter", e.name)?;
            writeln!(out, "{} {}", e.name, e.value.load(Ordering::Relaxed))?;
        }
        drop(ext);
        if let Some(p) = self.proxy.get() {
            render_proxy(out, p)?;
        }
        Ok(())
    }
}

/// The proxy's counters, providers sorted by name.
fn render_proxy(out: &mut String, proxy: &crate::proxy::Proxy) -> std::fmt::Result {
    use crate::proxy::stats::CLASSES;
    let mut routes: Vec<_> = proxy.routes.iter().collect();
    routes.sort_by(|a, b| a.0.cmp(b.0));
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    writeln!(
        out,
        "# HELP latchkey_proxy_requests_total Proxied requests by provider and the upstream's status class (none: no answer)."
    )?;
    writeln!(out, "# TYPE latchkey_proxy_requests_total counter")?;
    for (name, r) in &routes {
        let name = escape(name);
        for (i, class) in CLASSES.iter().enumerate() {
            writeln!(
                out,
                "latchkey_proxy_requests_total{{provider=\"{name}\",class=\"{class}\"}} {}",
                load(&r.stats.by_class[i])
            )?;
        }
    }
    writeln!(
        out,
        "# HELP latchkey_proxy_upstream_latency_seconds Time from sending a request upstream to its response head."
    )?;
    writeln!(
        out,
        "# TYPE latchkey_proxy_upstream_latency_seconds histogram"
    )?;
    for (name, r) in &routes {
        let name = escape(name);
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += load(&r.stats.latency[i]);
            writeln!(
                out,
                "latchkey_proxy_upstream_latency_seconds_bucket{{provider=\"{name}\",le=\"{bound}\"}} {cumulative}"
            )?;
        }
        cumulative += load(&r.stats.latency[BUCKETS.len()]);
        writeln!(
            out,
            "latchkey_proxy_upstream_latency_seconds_bucket{{provider=\"{name}\",le=\"+Inf\"}} {cumulative}"
        )?;
        // Microseconds summed; shown in seconds.
        let sum = load(&r.stats.latency_sum_us) as f64 / 1e6;
        writeln!(
            out,
            "latchkey_proxy_upstream_latency_seconds_sum{{provider=\"{name}\"}} {sum}"
        )?;
        writeln!(
            out,
            "latchkey_proxy_upstream_latency_seconds_count{{provider=\"{name}\"}} {}",
            load(&r.stats.latency_count)
        )?;
    }
    writeln!(
        out,
        "# HELP latchkey_proxy_tokens_total Tokens read from providers' answers, by provider and direction."
    )?;
    writeln!(out, "# TYPE latchkey_proxy_tokens_total counter")?;
    for (name, r) in &routes {
        let name = escape(name);
        for (dir, v) in [
            ("input", &r.stats.input_tokens),
            ("output", &r.stats.output_tokens),
        ] {
            writeln!(
                out,
                "latchkey_proxy_tokens_total{{provider=\"{name}\",direction=\"{dir}\"}} {}",
                load(v)
            )?;
        }
    }
    writeln!(
        out,
        "# HELP latchkey_proxy_refusals_total Requests refused by a key's limits, by provider and reason."
    )?;
    writeln!(out, "# TYPE latchkey_proxy_refusals_total counter")?;
    for (name, r) in &routes {
        let name = escape(name);
        for (reason, v) in [
            ("rpm", &r.stats.refused_rpm),
            ("token_budget", &r.stats.refused_budget),
        ] {
            writeln!(
                out,
                "latchkey_proxy_refusals_total{{provider=\"{name}\",reason=\"{reason}\"}} {}",
                load(v)
            )?;
        }
    }
    writeln!(
        out,
        "# HELP latchkey_proxy_realtime_sessions Realtime (WebSocket) sessions open through the proxy."
    )?;
    writeln!(out, "# TYPE latchkey_proxy_realtime_sessions gauge")?;
    writeln!(
        out,
        "latchkey_proxy_realtime_sessions {}",
        proxy.realtime.count()
    )?;
    Ok(())
}

/// Label values: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new();
        m.observe_request(&Method::GET, "/health", 200, Duration::from_millis(2));
        m.observe_request(&Method::GET, "/health", 200, Duration::from_secs(20));
        m.vault_op("reveal", false);
        let failures = Arc::new(AtomicU64::new(3));
        m.register_counter(
            "latchkey_tls_handshake_failures_total",
            "Failed TLS handshakes.",
            failures,
        );
        let text = m.render(true);
        assert!(text.contains(
            "latchkey_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "latchkey_http_request_duration_seconds_bucket{route=\"/health\",le=\"0.0025\"} 1"
        ));
        assert!(text.contains(
            "latchkey_http_request_duration_seconds_bucket{route=\"/health\",le=\"+Inf\"} 2"
        ));
        assert!(text.contains("latchkey_http_request_duration_seconds_count{route=\"/health\"} 2"));
        assert!(
            text.contains(
                "latchkey_vault_operations_total{operation=\"reveal\",outcome=\"error\"} 1"
            )
        );
        assert!(text.contains("latchkey_vault_sealed 1"));
        assert!(text.contains("latchkey_tls_handshake_failures_total 3"));
    }

    #[test]
    fn labels_from_the_network_are_bounded() {
        assert_eq!(MAX_ROUTES, 512);
        let m = Metrics::new();
        for i in 0..200 {
            let made_up =
                Method::from_bytes(format!("X{i}{}", "A".repeat(1000)).as_bytes()).expect("token");
            m.observe_request(&made_up, "unmatched", 405, Duration::from_millis(1));
        }
        // "unmatched" is one; 520 more templates, of which 511 are kept.
        for i in 0..(MAX_ROUTES + 8) {
            m.observe_request(&Method::GET, &format!("/r{i}"), 200, Duration::ZERO);
        }
        let text = m.render(false);
        assert!(text.contains(
            "latchkey_http_requests_total{method=\"OTHER\",route=\"unmatched\",status=\"405\"} 200"
        ));
        assert!(!text.contains("AAAA"), "a made-up method is never a label");
        assert!(text.contains("route=\"other\""));
        let routes: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.split("route=\"").nth(1))
            .filter_map(|r| r.split('"').next())
            .collect();
        assert_eq!(routes.len(), MAX_ROUTES + 1, "the templates kept, `other`");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
    }
}
