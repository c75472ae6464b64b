//! Credentials: given explicitly, or looked up in the docker config
//! (`auths`, `credHelpers`, `credsStore`, identity tokens) via `docker_credential`.
//!
//! Secrets never appear in `Debug` output, error messages or logs.

use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use docker_credential::{CredentialRetrievalError, DockerCredential};

use crate::reference::{Registry, DOCKER_HUB};

/// A username and password (from `--username` and `--password-stdin`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or personal access token. Never printed.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What we can authenticate with.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// Basic credentials (also sent to a token realm).
    UserPass(Credentials),
    /// An OAuth2 refresh token from `docker login` (`identitytoken`).
    IdentityToken(String),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::UserPass(c) => c.fmt(f),
            Secret::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

impl Secret {
    /// The user name, for messages.
    pub fn username(&self) -> &str {
        match self {
            Secret::UserPass(c) => &c.username,
            Secret::IdentityToken(_) => "<identity token>",
        }
    }
}

/// The keys a docker config may store this registry's credentials under.
pub fn config_keys(registry: &Registry) -> Vec<String> {
    if registry.name == DOCKER_HUB {
        // `docker login` writes this key and passes it to credential helpers.
        vec!["https://index.docker.io/v1/".into(), "docker.io".into()]
    } else {
        vec![registry.name.clone()]
    }
}

/// The docker config directory: `dir`, else `$DOCKER_CONFIG`, else `~/.docker`.
pub fn config_dir(dir: Option<&Path>) -> Option<PathBuf> {
    if let Some(d) = dir {
        return Some(d.to_path_buf());
    }
    std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))
}

/// Look the registry up in the docker config. Blocking (may run a credential helper).
/// A missing config or entry means anonymous (`None`); other problems are logged and
/// also mean anonymous.
pub fn lookup(registry: &Registry, dir: Option<&Path>) -> Option<Secret> {
    let path = config_dir(dir)?.join("config.json");
    for key in config_keys(registry) {
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(_) => return None,
        };
        match docker_credential::get_credential_from_reader(BufReader::new(f), &key) {
            Ok(DockerCredential::UsernamePassword(username, password)) => {
                tracing::debug!(registry = %registry, user = %username, "using docker config credentials");
                return Some(Secret::UserPass(Credentials { username, password }));
            }
            Ok(DockerCredential::IdentityToken(t)) => {
                tracing::debug!(registry = %registry, "using docker config identity token");
                return Some(Secret::IdentityToken(t));
            }
            Err(CredentialRetrievalError::NoCredentialConfigured) => continue,
            Err(e) => {
                // HelperFailure carries the helper's stdout, which may hold a secret.
                let msg = match e {
                    CredentialRetrievalError::HelperFailure { helper, .. } => {
                        format!("credential helper {helper} failed")
                    }
                    other => other.to_string(),
                };
                tracing::warn!(registry = %registry, config = %path.display(), "docker credentials unusable: {msg}; continuing anonymously");
                return None;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_password() {
        let c = Credentials {
            username: "lab".into(),
            password: "s3cr3t-pw".into(),
        };
        let s = format!(
            "{c:?} {:?} {:?}",
            Secret::UserPass(c.clone()),
            Secret::IdentityToken("tok-s3cr3t".into())
        );
        assert!(s.contains("lab"));
        assert!(!s.contains("s3cr3t"), "{s}");
    }

    #[test]
    fn reads_docker_config() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("lab:labpass");
        std::fs::write(
            dir.path().join("config.json"),
            format!(
                r#"{{"auths":{{"localhost:5998":{{"auth":"{auth}"}},"https://index.docker.io/v1/":{{"identitytoken":"idt"}}}}}}"#
            ),
        )
        .unwrap();
        let (reg, _) = Registry::parse("localhost:5998").unwrap();
        assert_eq!(
            lookup(&reg, Some(dir.path())),
            Some(Secret::UserPass(Credentials {
                username: "lab".into(),
                password: "labpass".into()
            }))
        );
        let (hub, _) = Registry::parse("docker.io").unwrap();
        assert_eq!(
            lookup(&hub, Some(dir.path())),
            Some(Secret::IdentityToken("idt".into()))
        );
        let (other, _) = Registry::parse("ghcr.io").unwrap();
        assert_eq!(lookup(&other, Some(dir.path())), None);
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(lookup(&reg, Some(empty.path())), None);
    }
}
