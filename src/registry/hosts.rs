//! containerd-style `hosts.toml` mirror configuration (`--hosts-dir DIR`):
//! `DIR/<registry>/hosts.toml` (e.g. `DIR/docker.io/hosts.toml`,
//! `DIR/127.0.0.1:5000/hosts.toml`), else `DIR/_default/hosts.toml`.
//!
//! ```toml
//! [host."https://mirror.example"]
//!   capabilities = ["pull", "resolve"]
//!   ca = "/etc/certs/mirror-ca.pem"        # or a list
//!   skip_verify = false
//!   client = [["/etc/certs/c.pem", "/etc/certs/c.key"]]   # or "c.pem" holding both
//! ```
//!
//! Hosts are tried in the order written, then the registry itself. The
//! top-level `server` key (replacing the upstream) is not supported and is
//! refused rather than ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::mirrors::{Capabilities, MirrorSpec};
use crate::error::{Error, Result};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    server: Option<String>,
    #[serde(default)]
    host: toml::Table,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ClientCert {
    /// One PEM file holding certificate and key.
    Combined(String),
    /// `[[cert, key]]` or `[combined]`.
    List(Vec<OneOrMany>),
}

#[derive(Deserialize)]
struct HostEntry {
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    #[serde(default)]
    skip_verify: bool,
    client: Option<ClientCert>,
    /// Accepted for compatibility; regfs always uses the URL as the API root.
    #[serde(default)]
    #[allow(dead_code)]
    override_path: bool,
    header: Option<toml::Table>,
}

/// The `hosts.toml` file for `registry` under `dir`, if any.
pub fn hosts_file(dir: &Path, registry: &str) -> Option<PathBuf> {
    [registry, "_default"]
        .iter()
        .map(|n| dir.join(n).join("hosts.toml"))
        .find(|p| p.is_file())
}

/// The mirrors `dir` configures for `registry` (empty without a file).
pub fn load(dir: &Path, registry: &str) -> Result<Vec<MirrorSpec>> {
    let Some(path) = hosts_file(dir, registry) else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
    parse(&text, path.parent().unwrap_or(dir))
        .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
}

/// Parse a `hosts.toml`; relative file names are resolved against `base`.
pub fn parse(text: &str, base: &Path) -> std::result::Result<Vec<MirrorSpec>, String> {
    let file: HostsFile = toml::from_str(text).map_err(|e| e.to_string())?;
    if file.server.is_some() {
        return Err("`server` (replacing the registry's endpoint) is not supported".into());
    }
    let abs = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    };
    let mut out = Vec::new();
    for (url, value) in file.host {
        let entry: HostEntry = value
            .try_into()
            .map_err(|e: toml::de::Error| format!("host {url:?}: {e}"))?;
        let mut spec = MirrorSpec::parse(&url).map_err(|e| e.to_string())?;
        if let Some(caps) = entry.capabilities {
            let mut c = Capabilities {
                pull: false,
                resolve: false,
            };
            for cap in caps {
                match cap.as_str() {
                    "pull" => c.pull = true,
                    "resolve" => c.resolve = true,
                    "push" => {} // regfs never pushes through a mirror
                    other => return Err(format!("host {url:?}: unknown capability {other:?}")),
                }
            }
            spec.capabilities = c;
        }
        spec.ca_certs = match entry.ca {
            None => vec![],
            Some(OneOrMany::One(p)) => vec![abs(p)],
            Some(OneOrMany::Many(v)) => v.into_iter().map(abs).collect(),
        };
        spec.skip_verify = entry.skip_verify;
        spec.client_cert = match entry.client {
            None => None,
            Some(ClientCert::Combined(p)) => Some((abs(p.clone()), abs(p))),
            Some(ClientCert::List(v)) => match v.into_iter().next() {
                None => None,
                Some(OneOrMany::One(p)) => Some((abs(p.clone()), abs(p))),
                Some(OneOrMany::Many(pair)) if pair.len() == 2 => {
                    let mut it = pair.into_iter();
                    Some((abs(it.next().unwrap()), abs(it.next().unwrap())))
                }
                Some(OneOrMany::Many(_)) => {
                    return Err(format!("host {url:?}: client must be [cert, key]"))
                }
            },
        };
        if entry.header.is_some() {
            return Err(format!("host {url:?}: `header` is not supported"));
        }
        out.push(spec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_in_order() {
        let text = r#"
[host."http://127.0.0.1:5001"]
  capabilities = ["pull"]
[host."https://mirror.example"]
  capabilities = ["pull", "resolve"]
  ca = "ca.pem"
  skip_verify = true
  client = [["/c.pem", "/c.key"]]
[host."https://b.example"]
"#;
        let m = parse(text, Path::new("/etc/regfs/hosts/docker.io")).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].host_port(), "127.0.0.1:5001");
        assert_eq!(
            m[0].capabilities,
            Capabilities {
                pull: true,
                resolve: false
            }
        );
        assert_eq!(
            m[1].ca_certs,
            vec![PathBuf::from("/etc/regfs/hosts/docker.io/ca.pem")]
        );
        assert!(m[1].skip_verify);
        assert_eq!(
            m[1].client_cert,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/c.key")))
        );
        assert_eq!(m[2].capabilities, Capabilities::default());
        assert!(parse("server = \"https://x\"", Path::new("/")).is_err());
        assert!(parse(
            "[host.\"https://x\"]\ncapabilities = [\"fly\"]",
            Path::new("/")
        )
        .is_err());
        assert!(parse("nonsense = 1", Path::new("/")).is_err());
    }

    #[test]
    fn finds_registry_then_default() {
        let d = tempfile::tempdir().unwrap();
        assert!(load(d.path(), "docker.io").unwrap().is_empty());
        std::fs::create_dir_all(d.path().join("_default")).unwrap();
        std::fs::write(
            d.path().join("_default/hosts.toml"),
            "[host.\"http://m:1\"]\n",
        )
        .unwrap();
        assert_eq!(load(d.path(), "docker.io").unwrap().len(), 1);
        std::fs::create_dir_all(d.path().join("docker.io")).unwrap();
        std::fs::write(d.path().join("docker.io/hosts.toml"), "").unwrap();
        assert!(load(d.path(), "docker.io").unwrap().is_empty());
    }
}
