//! `Link: <…>; rel="next"` pagination (RFC 8288) for the catalog and tag lists.

use url::Url;

use crate::error::{Error, Result};

/// The most pages one listing may take before we give up.
pub const MAX_PAGES: usize = 10_000;

/// The `rel="next"` target of a `Link` header value, if any, as written (not resolved).
/// Malformed values give `Err`.
pub fn next_link(header: &str) -> Result<Option<String>> {
    let bad = |why: &str| Error::invalid(format!("malformed Link header {header:?}: {why}"));
    let mut rest = header.trim();
    while !rest.is_empty() {
        rest = rest.strip_prefix('<').ok_or_else(|| bad("expected '<'"))?;
        let end = rest.find('>').ok_or_else(|| bad("missing '>'"))?;
        let target = &rest[..end];
        rest = &rest[end + 1..];
        // Params up to the next link (a ',' outside quotes).
        let mut is_next = false;
        loop {
            rest = rest.trim_start();
            if rest.is_empty() {
                break;
            }
            if let Some(r) = rest.strip_prefix(',') {
                rest = r.trim_start();
                break;
            }
            rest = rest
                .strip_prefix(';')
                .ok_or_else(|| bad("expected ';'"))?
                .trim_start();
            let eq = rest.find('=');
            let name_end = rest.find([';', ',', '=']).unwrap_or(rest.len());
            let name = rest[..name_end].trim().to_ascii_lowercase();
            if eq != Some(name_end) {
                rest = &rest[name_end..];
                continue; // a param without a value
            }
            rest = rest[name_end + 1..].trim_start();
            let value;
            if let Some(r) = rest.strip_prefix('"') {
                let close = r.find('"').ok_or_else(|| bad("unterminated quote"))?;
                value = r[..close].to_string();
                rest = &r[close + 1..];
            } else {
                let e = rest.find([';', ',']).unwrap_or(rest.len());
                value = rest[..e].trim().to_string();
                rest = &rest[e..];
            }
            if name == "rel"
                && value
                    .split_ascii_whitespace()
                    .any(|v| v.eq_ignore_ascii_case("next"))
            {
                is_next = true;
            }
        }
        if is_next {
            return Ok(Some(target.to_string()));
        }
    }
    Ok(None)
}

/// Resolve a next-page target against the current page's URL, refusing other origins.
pub fn resolve_next(current: &Url, target: &str) -> Result<Url> {
    let next = current
        .join(target)
        .map_err(|e| Error::invalid(format!("Link target {target:?}: {e}")))?;
    if next.origin() != current.origin() {
        return Err(Error::invalid(format!(
            "Link to another host refused: {} (listing {})",
            next.origin().ascii_serialization(),
            current.origin().ascii_serialization()
        )));
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_next() {
        assert_eq!(
            next_link(r#"</v2/_catalog?last=b&n=100>; rel="next""#)
                .unwrap()
                .as_deref(),
            Some("/v2/_catalog?last=b&n=100")
        );
        assert_eq!(
            next_link(r#"<https://r.example/v2/a/tags/list?n=2&last=x>;rel=next"#)
                .unwrap()
                .as_deref(),
            Some("https://r.example/v2/a/tags/list?n=2&last=x")
        );
        assert_eq!(
            next_link(r#"</a>; rel="prev", </b>; title="x, y"; rel="next last""#)
                .unwrap()
                .as_deref(),
            Some("/b")
        );
        assert_eq!(next_link(r#"</a>; rel="prev""#).unwrap(), None);
        assert_eq!(next_link("").unwrap(), None);
    }

    #[test]
    fn malformed_links_are_errors() {
        for s in [
            "/v2/x; rel=next",
            "</v2/x; rel=next",
            r#"</x>; rel="next"#,
            "</x> junk",
        ] {
            assert!(next_link(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn resolves_relative_and_refuses_other_hosts() {
        let cur = Url::parse("http://127.0.0.1:5000/v2/_catalog?n=2").unwrap();
        assert_eq!(
            resolve_next(&cur, "/v2/_catalog?last=b&n=2")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:5000/v2/_catalog?last=b&n=2"
        );
        assert!(resolve_next(&cur, "http://127.0.0.1:5000/v2/_catalog?last=c").is_ok());
        assert!(resolve_next(&cur, "http://evil.example/v2/_catalog").is_err());
        assert!(resolve_next(&cur, "https://127.0.0.1:5000/v2/_catalog").is_err());
    }
}
