//! The image config: what regfs needs of it (diff_ids, creation time, platform).

use std::time::SystemTime;

use oci_spec::image::ImageConfiguration;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// Largest config blob regfs accepts (16 MiB).
pub const MAX_CONFIG_SIZE: u64 = 16 << 20;

/// The parts of an image config the filesystem uses.
#[derive(Clone, Debug)]
pub struct ImageConfig {
    /// Digests of the uncompressed layer tars, bottom first.
    pub diff_ids: Vec<Digest>,
    /// When the image was created, if the config says.
    pub created: Option<SystemTime>,
    /// `os/architecture[/variant]` as the config says.
    pub platform: String,
}

impl ImageConfig {
    /// Parse config bytes (already verified against their digest).
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig> {
        let c: ImageConfiguration = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid(format!("image config: {e}")))?;
        let diff_ids = c
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| d.parse::<Digest>())
            .collect::<Result<Vec<_>>>()?;
        let created = c.created().as_deref().and_then(httpdate_rfc3339);
        let mut platform = format!("{}/{}", c.os(), c.architecture());
        if let Some(v) = c.variant() {
            platform.push('/');
            platform.push_str(v);
        }
        Ok(ImageConfig {
            diff_ids,
            created,
            platform,
        })
    }
}

/// Parse the RFC 3339 timestamps configs carry (`2024-01-02T03:04:05.123Z`,
/// offsets allowed); `None` if it is not one.
fn httpdate_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || (b[10] != b'T' && b[10] != b't') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut nanos = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(|c| c.is_ascii_digit()).collect();
        rest = &frac[digits.len()..];
        let padded = format!("{:0<9}", &digits[..digits.len().min(9)]);
        nanos = padded.parse().ok()?;
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (o[1..3].parse::<i64>().ok()? * 3600 + o[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + h * 3600 + mi * 60 + se - offset;
    if secs < 0 {
        return None;
    }
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_config() {
        let j = r#"{"created":"2024-01-02T03:04:05.5Z","architecture":"arm64","variant":"v8","os":"linux",
          "rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111"]}}"#;
        let c = ImageConfig::parse(j.as_bytes()).unwrap();
        assert_eq!(c.diff_ids.len(), 1);
        assert_eq!(c.platform, "linux/arm64/v8");
        assert_eq!(
            c.created.unwrap(),
            SystemTime::UNIX_EPOCH + Duration::new(1704164645, 500_000_000)
        );
        assert!(
            ImageConfig::parse(b"{}").is_err()
                || ImageConfig::parse(b"{}").unwrap().diff_ids.is_empty()
        );
        let bad = j.replace("sha256:1111", "sha999:1111");
        assert!(ImageConfig::parse(bad.as_bytes()).is_err());
    }

    #[test]
    fn rfc3339() {
        assert_eq!(
            httpdate_rfc3339("1970-01-01T01:00:00+01:00"),
            Some(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(httpdate_rfc3339("yesterday"), None);
    }
}
