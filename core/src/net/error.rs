//! An error and its causes. hyper's and rustls's errors keep the reason
//! (refused, TLS, DNS, timeout) in their sources, so a log line or a
//! classification must walk the whole chain.

use std::error::Error;

/// `e`, then each of its sources in turn.
pub fn causes<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |&cur| cur.source())
}

/// The error and its causes on one line (`a: b: c`), for the log.
pub fn chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_whole_chain_is_shown_and_walked() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        ));
        assert_eq!(chain(&e), "outer: connect timed out");
        let kinds: Vec<bool> = causes(&e).map(|c| c.is::<std::io::Error>()).collect();
        assert_eq!(kinds, [false, true]);
    }
}
