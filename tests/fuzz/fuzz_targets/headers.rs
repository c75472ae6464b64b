//! Headers a hostile registry controls: WWW-Authenticate challenges, Link
//! (paging), Retry-After. Parsed or refused, never a panic.
#![no_main]
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use regfs::registry::auth::challenge;
use regfs::registry::{paging, retry};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(chs) = challenge::parse(s) {
        for c in &chs {
            let _ = (
                c.is_bearer(),
                c.is_basic(),
                c.param("realm"),
                c.param("scope"),
            );
        }
    }
    if let Ok(Some(next)) = paging::next_link(s) {
        let base = url::Url::parse("http://127.0.0.1:5000/v2/_catalog?n=10").unwrap();
        let _ = paging::resolve_next(&base, &next);
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let _ = retry::parse_retry_after(s, now);
});
