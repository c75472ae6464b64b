//! The image config: what regfs needs of it (diff_ids, creation time,
//! platform, and the default command with its environment).

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
    /// The command a container runs by default: `Entrypoint` then `Cmd`.
    pub command: Vec<String>,
    /// The container's environment (`NAME=value`), for its `PATH`.
    pub env: Vec<String>,
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
        let created = c.created().as_deref().and_then(created_time);
        let mut platform = format!("{}/{}", c.os(), c.architecture());
        if let Some(v) = c.variant() {
            platform.push('/');
            platform.push_str(v);
        }
        let run = c.config().as_ref();
        let command = run
            .and_then(|r| r.entrypoint().clone())
            .unwrap_or_default()
            .into_iter()
            .chain(run.and_then(|r| r.cmd().clone()).unwrap_or_default())
            .collect();
        let env = run.and_then(|r| r.env().clone()).unwrap_or_default();
        Ok(ImageConfig {
            diff_ids,
            created,
            platform,
            command,
            env,
        })
    }
}

/// The config's `created`, if it is a valid RFC 3339 time after the epoch.
fn created_time(s: &str) -> Option<SystemTime> {
    let (secs, nsec) = crate::rfc3339::parse(s)?;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, nsec))
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
    fn the_default_command_is_entrypoint_then_cmd() {
        let j = r#"{"architecture":"amd64","os":"linux",
          "config":{"Entrypoint":["/docker-entrypoint.sh"],"Cmd":["nginx","-g"],"Env":["PATH=/usr/sbin:/usr/bin"]},
          "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = ImageConfig::parse(j.as_bytes()).unwrap();
        assert_eq!(c.command, ["/docker-entrypoint.sh", "nginx", "-g"]);
        assert_eq!(c.env, ["PATH=/usr/sbin:/usr/bin"]);
        let none =
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert!(ImageConfig::parse(none.as_bytes())
            .unwrap()
            .command
            .is_empty());
    }

    #[test]
    fn rfc3339() {
        assert_eq!(
            created_time("1970-01-01T01:00:00+01:00"),
            Some(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(created_time("yesterday"), None);
    }
}
