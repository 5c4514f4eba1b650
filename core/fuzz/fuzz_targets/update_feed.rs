//! The update feed (`update::feed::parse`): JSON anyone between us and
//! the feed's host may write.
//!
//! Properties:
//! - input over `MAX_FEED_BYTES` is refused whatever it holds;
//! - an accepted feed's version has no build metadata; every platform's
//!   artifact has a size in 1..=`MAX_ARTIFACT_BYTES`, 64 lowercase hex
//!   digits of SHA-256, and a relative URL whose last segment is exactly
//!   `artifact_name(version, target)` (the signature's context) and which,
//!   resolved against an HTTPS feed URL, stays on the feed's origin;
//! - notes hold no control characters.
#![no_main]

use latchkey_core::update::feed::{self, FeedError, MAX_ARTIFACT_BYTES, MAX_FEED_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let res = feed::parse(data);
    if data.len() > MAX_FEED_BYTES {
        assert!(matches!(res, Err(FeedError::TooLarge)));
        return;
    }
    let Ok(f) = res else { return };
    assert!(f.version.build.is_empty());
    let base = url::Url::parse("https://feed.example/channel/latest.json").expect("base");
    for (target, a) in &f.artifacts {
        assert!((1..=MAX_ARTIFACT_BYTES).contains(&a.size));
        assert_eq!(a.sha256.len(), 64);
        assert!(a.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        let name = feed::artifact_name(&f.version, target);
        assert_eq!(a.url.rsplit('/').next(), Some(name.as_str()));
        let u = feed::resolve(&base, a).expect("a checked relative URL resolves");
        assert_eq!(u.origin(), base.origin());
        assert!(u.path().starts_with("/channel/"), "{u}");
    }
    if let Some(n) = &f.notes {
        assert!(!n.chars().any(char::is_control), "{n:?}");
    }
});
