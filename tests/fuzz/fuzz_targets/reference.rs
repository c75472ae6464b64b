//! Image references, registry names, digests and platforms: any string is
//! parsed or refused, never a panic; what parses prints back to something
//! that parses to the same value.
#![no_main]
use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use regfs::digest::Digest;
use regfs::image::Platform;
use regfs::reference::{Reference, Registry};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Reference::from_str(s) {
        let shown = r.to_string();
        let again = Reference::from_str(&shown)
            .unwrap_or_else(|e| panic!("{s:?} parsed, its display {shown:?} does not: {e}"));
        assert_eq!(again.to_string(), shown, "display is not stable for {s:?}");
    }
    let _ = Registry::parse(s);
    if let Ok(d) = Digest::from_str(s) {
        assert_eq!(Digest::from_str(&d.to_string()).ok(), Some(d));
    }
    let _ = Platform::from_str(s);
});
