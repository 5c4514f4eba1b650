//! The one `Cookie` header parser (RFC 6265 §5.4: `name=value` pairs
//! separated by `;`), for the session and known-device cookies, the OAuth
//! binding cookie, and the cookies an agent backend may see.

use axum::http::{HeaderMap, header};

/// One pair of a `Cookie` header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair<'a> {
    /// The whole pair, trimmed.
    pub raw: &'a str,
    /// What stands before the first `=` (the whole pair if there is none).
    pub name: &'a str,
    /// What follows the first `=`, untrimmed; `None` without a `=`.
    pub value: Option<&'a str>,
}

/// The non-empty pairs of one `Cookie` header value, in order.
pub fn pairs(value: &str) -> impl Iterator<Item = Pair<'_>> {
    value
        .split(';')
        .map(str::trim)
        .filter(|raw| !raw.is_empty())
        .map(|raw| match raw.split_once('=') {
            Some((name, value)) => Pair {
                raw,
                name,
                value: Some(value),
            },
            None => Pair {
                raw,
                name: raw,
                value: None,
            },
        })
}

/// The value of the first `name=…` pair in the request's `Cookie` headers,
/// trimmed; `None` when there is none or it is empty.
pub fn get<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(pairs)
        .find(|p| p.value.is_some() && p.name == name)
        .and_then(|p| p.value)
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::COOKIE, v.parse().expect("hv"));
        }
        h
    }

    #[test]
    fn the_first_pair_of_the_exact_name_wins() {
        let h = headers(&["a=1; __Host-latchkey_session=lks_abc ; b=2"]);
        assert_eq!(get(&h, "__Host-latchkey_session"), Some("lks_abc"));
        assert_eq!(
            get(&headers(&["latchkey_session=x"]), "__Host-latchkey_session"),
            None
        );
        // Across headers, and a first empty value is not skipped over.
        let h = headers(&["x=1", "k=; k=2"]);
        assert_eq!(get(&h, "k"), None);
        assert_eq!(
            get(&headers(&["k", "k=v"]), "k"),
            Some("v"),
            "no `=`: not a value"
        );
        assert_eq!(get(&HeaderMap::new(), "k"), None);
    }

    #[test]
    fn pairs_keep_their_raw_text() {
        let got: Vec<Pair<'_>> = pairs(" a=1 ;; flag ;b= 2").collect();
        assert_eq!(
            got,
            [
                Pair {
                    raw: "a=1",
                    name: "a",
                    value: Some("1")
                },
                Pair {
                    raw: "flag",
                    name: "flag",
                    value: None
                },
                Pair {
                    raw: "b= 2",
                    name: "b",
                    value: Some(" 2")
                },
            ]
        );
    }
}
