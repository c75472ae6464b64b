//! Credentials: given explicitly, or looked up in podman's and docker's files
//! (`REGISTRY_AUTH_FILE`, `containers/auth.json`, `~/.docker/config.json`: `auths`,
//! `credHelpers`, `credsStore`, identity tokens) via `docker_credential`.
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

/// The credential files consulted, in order, with the process environment.
/// See [`auth_files_with`].
pub fn auth_files(dir: Option<&Path>) -> Vec<PathBuf> {
    auth_files_with(dir, |k| std::env::var_os(k))
}

/// The credential files consulted, in order; the first holding an entry for the
/// registry wins.
///
/// With an explicit docker config directory `dir`, only `dir/config.json`.
/// Otherwise podman's and docker's files, as `containers-auth.json(5)` orders them:
/// `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
/// `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config/…`), then the docker config
/// (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`). All share the
/// docker format (`auths`, `credHelpers`, `credsStore`, `identitytoken`).
pub fn auth_files_with(
    dir: Option<&Path>,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Vec<PathBuf> {
    if let Some(d) = dir {
        return vec![d.join("config.json")];
    }
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = nonempty("HOME");
    let mut out = Vec::new();
    out.extend(nonempty("REGISTRY_AUTH_FILE"));
    out.extend(nonempty("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    let xdg_config =
        nonempty("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config")));
    out.extend(xdg_config.map(|d| d.join("containers/auth.json")));
    let docker = nonempty("DOCKER_CONFIG").or_else(|| home.as_ref().map(|h| h.join(".docker")));
    out.extend(docker.map(|d| d.join("config.json")));
    out.dedup();
    out
}

/// Look the registry up in the credential files ([`auth_files`]). Blocking (may run
/// a credential helper, `docker-credential-NAME get`, found on `PATH`). Missing
/// files or entries mean anonymous (`None`); unreadable files and failing helpers
/// are logged (without their output, which may hold a secret) and skipped.
pub fn lookup(registry: &Registry, dir: Option<&Path>) -> Option<Secret> {
    for path in auth_files(dir) {
        if let Some(s) = lookup_in(registry, &path) {
            return Some(s);
        }
    }
    tracing::debug!(registry = %registry, "no stored credentials; anonymous");
    None
}

/// Look the registry up in one docker-format file.
pub fn lookup_in(registry: &Registry, path: &Path) -> Option<Secret> {
    for key in config_keys(registry) {
        let f = File::open(path).ok()?;
        match docker_credential::get_credential_from_reader(BufReader::new(f), &key) {
            Ok(DockerCredential::UsernamePassword(username, password)) => {
                tracing::debug!(registry = %registry, user = %username, file = %path.display(), "using stored credentials");
                return Some(Secret::UserPass(Credentials { username, password }));
            }
            Ok(DockerCredential::IdentityToken(t)) => {
                tracing::debug!(registry = %registry, file = %path.display(), "using a stored identity token");
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
                tracing::warn!(registry = %registry, file = %path.display(), "stored credentials unusable: {msg}; trying the next source");
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

    #[test]
    fn auth_file_order() {
        let env = |k: &str| {
            let v = match k {
                "HOME" => "/home/u",
                "REGISTRY_AUTH_FILE" => "/etc/auth.json",
                "XDG_RUNTIME_DIR" => "/run/user/1",
                "DOCKER_CONFIG" => "",
                _ => return None,
            };
            Some(std::ffi::OsString::from(v))
        };
        let got = auth_files_with(None, env);
        let want: Vec<PathBuf> = [
            "/etc/auth.json",
            "/run/user/1/containers/auth.json",
            "/home/u/.config/containers/auth.json",
            "/home/u/.docker/config.json",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(got, want);
        assert_eq!(
            auth_files_with(Some(Path::new("/d")), env),
            vec![PathBuf::from("/d/config.json")]
        );
        let none = auth_files_with(None, |_| None);
        assert!(none.is_empty());
    }

    #[test]
    fn later_files_are_consulted() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("auth.json");
        let second = dir.path().join("config.json");
        std::fs::write(&first, r#"{"auths":{"other:1":{"auth":"eDp5"}}}"#).unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("lab:labpass");
        std::fs::write(
            &second,
            format!(r#"{{"auths":{{"localhost:5998":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        let (reg, _) = Registry::parse("localhost:5998").unwrap();
        assert_eq!(lookup_in(&reg, &first), None);
        assert!(matches!(
            lookup_in(&reg, &second),
            Some(Secret::UserPass(_))
        ));
    }
}
