//! Platforms (`linux/arm64/v8`): parsing, the host's own, and matching index entries.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// An OS / architecture / variant triple as indexes describe it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`, `windows`, …
    pub os: String,
    /// GOARCH names: `amd64`, `arm64`, `arm`, `386`, …
    pub architecture: String,
    /// `v8`, `v7`, … when the architecture has variants.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on, in GOOS/GOARCH terms.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: if architecture == "arm64" {
                Some("v8".into())
            } else {
                None
            },
        }
    }

    /// Whether an index entry's platform satisfies this wanted platform. A missing
    /// variant on either side matches (arm64 images often omit `v8`).
    pub fn matches(&self, candidate: &Platform) -> bool {
        self.os == candidate.os
            && self.architecture == candidate.architecture
            && match (&self.variant, &candidate.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// The name of the platform's symlink in an index directory: `linux-arm64-v8`.
    pub fn dir_name(&self) -> String {
        let mut s = format!("{}-{}", self.os, self.architecture);
        if let Some(v) = &self.variant {
            s.push('-');
            s.push_str(v);
        }
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

impl FromStr for Platform {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(Error::invalid(format!(
                "platform {s:?}: expected os/arch[/variant], like linux/arm64/v8"
            ))),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.dir_name(), "linux-arm64-v8");
        let plain: Platform = "linux/arm64".parse().unwrap();
        assert!(plain.matches(&p) && p.matches(&plain));
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(!v7.matches(&"linux/arm/v6".parse().unwrap()));
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd64/v1/x".parse::<Platform>().is_err());
        assert!("linux/../x".parse::<Platform>().is_ok()); // dots allowed in names…
        assert_eq!(
            Platform {
                os: "a/b".into(),
                architecture: "c".into(),
                variant: None
            }
            .dir_name(),
            "a_b-c"
        ); // …but never a slash in a directory name
    }

    #[test]
    fn host_is_linux() {
        assert_eq!(Platform::host().os, "linux");
    }
}
