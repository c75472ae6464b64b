//! Image references as `docker pull` takes them: parse, validate, normalise.
//!
//! Grammar (distribution/reference):
//! `[registry/]name-component(/name-component)*[:tag][@digest]`, where a name
//! component is `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, a tag is
//! `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`, and the first component is a registry
//! when it contains `.` or `:` or is `localhost`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The registry docker.io stands for, and the host its API lives on.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The longest repository name the distribution spec allows.
pub const MAX_NAME_LEN: usize = 255;

/// A registry as users write it, normalised.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Registry {
    /// The name users see (`docker.io`, `localhost:5000`).
    pub name: String,
    /// The `host[:port]` the v2 API is reached at.
    pub api_host: String,
}

impl Registry {
    /// Parse `localhost:5000`, `registry.example.com`, `docker.io`, optionally with a
    /// `http://` or `https://` prefix (returned separately: `Some(true)` for http).
    pub fn parse(s: &str) -> Result<(Registry, Option<bool>)> {
        let (scheme, rest) = if let Some(r) = s.strip_prefix("http://") {
            (Some(true), r)
        } else if let Some(r) = s.strip_prefix("https://") {
            (Some(false), r)
        } else {
            (None, s)
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(Error::invalid(format!(
                "registry {s:?}: expected host[:port], like localhost:5000 or docker.io"
            )));
        }
        validate_host(rest)?;
        let name = match rest {
            "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            other => other.to_ascii_lowercase(),
        };
        let api_host = if name == DOCKER_HUB {
            DOCKER_HUB_API.to_string()
        } else {
            name.clone()
        };
        Ok((Registry { name, api_host }, scheme))
    }

    /// Whether the registry is on this machine (plain HTTP is allowed there).
    pub fn is_loopback(&self) -> bool {
        let host = host_of(&self.api_host);
        host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

fn host_of(hostport: &str) -> &str {
    if hostport.starts_with('[') {
        return hostport
            .split_once(']')
            .map(|(h, _)| &h[1..])
            .unwrap_or(hostport);
    }
    hostport
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(hostport)
}

fn validate_host(s: &str) -> Result<()> {
    let bad = || Error::invalid(format!("registry host {s:?} is not a valid host[:port]"));
    let (host, port) = if s.starts_with('[') {
        let (h, rest) = s.split_once(']').ok_or_else(bad)?;
        (&h[1..], rest.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if let Some(p) = port {
        p.parse::<u16>().map_err(|_| bad())?;
    }
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':')
    {
        return Err(bad());
    }
    Ok(())
}

/// A tag or a digest: what follows the repository name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Selector {
    /// `:tag`
    Tag(String),
    /// `@sha256:…`
    Digest(Digest),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Tag(t) => f.write_str(t),
            Selector::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// A full image reference: `[registry/]repository[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The registry, when the reference names one.
    pub registry: Option<String>,
    /// The repository path, e.g. `library/python`.
    pub repository: String,
    /// The tag, if any.
    pub tag: Option<String>,
    /// The digest, if any (wins over the tag when both are present).
    pub digest: Option<Digest>,
}

impl Reference {
    /// What to ask the registry for: the digest if present, else the tag, else `latest`.
    pub fn selector(&self) -> Selector {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Selector::Digest(d.clone()),
            (None, Some(t)) => Selector::Tag(t.clone()),
            (None, None) => Selector::Tag("latest".into()),
        }
    }

    /// Apply docker.io's rule: a one-component name on Docker Hub lives in `library/`.
    pub fn normalized_for(mut self, registry: &Registry) -> Self {
        if registry.name == DOCKER_HUB && !self.repository.contains('/') {
            self.repository = format!("library/{}", self.repository);
        }
        self
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            validate_tag(t)?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                validate_host(first)?;
                (Some(first.to_string()), path)
            }
            _ => (None, name),
        };
        validate_repository(repository)?;
        Ok(Reference {
            registry,
            repository: repository.to_string(),
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Check one path component of a repository name.
pub fn validate_component(c: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid(format!("name component {c:?}: {why}")));
    let b = c.as_bytes();
    if b.is_empty() {
        return bad("empty");
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return bad("must start and end with [a-z0-9]");
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__', or one or more '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return bad("separators are '.', '_', '__' or dashes, and letters are lowercase");
        }
    }
    Ok(())
}

/// Check a whole repository name (`lab/busybox`).
pub fn validate_repository(name: &str) -> Result<()> {
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "repository name longer than {MAX_NAME_LEN} bytes"
        )));
    }
    for c in name.split('/') {
        validate_component(c)?;
    }
    Ok(())
}

/// Check a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<()> {
    let b = tag.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    if b.is_empty()
        || b.len() > 128
        || !word(b[0])
        || !b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
    {
        return Err(Error::invalid(format!(
            "tag {tag:?}: expected [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_references() {
        let r: Reference = "library/python:3.11".parse().unwrap();
        assert_eq!(r.registry, None);
        assert_eq!(r.repository, "library/python");
        assert_eq!(r.tag.as_deref(), Some("3.11"));
        let r: Reference = "localhost:5000/lab/busybox".parse().unwrap();
        assert_eq!(r.registry.as_deref(), Some("localhost:5000"));
        assert_eq!(r.selector(), Selector::Tag("latest".into()));
        let d = Digest::sha256_of(b"x");
        let r: Reference = format!("ghcr.io/a/b:v1@{d}").parse().unwrap();
        assert_eq!(r.selector(), Selector::Digest(d));
        assert_eq!(
            r.to_string(),
            format!("ghcr.io/a/b:v1@{}", r.digest.as_ref().unwrap())
        );
    }

    #[test]
    fn docker_hub_normalisation() {
        let (reg, scheme) = Registry::parse("docker.io").unwrap();
        assert_eq!(reg.api_host, "registry-1.docker.io");
        assert_eq!(scheme, None);
        let r = "python:3.11"
            .parse::<Reference>()
            .unwrap()
            .normalized_for(&reg);
        assert_eq!(r.repository, "library/python");
        let (reg2, _) = Registry::parse("index.docker.io").unwrap();
        assert_eq!(reg2, reg);
        let (local, scheme) = Registry::parse("http://localhost:5000/").unwrap();
        assert_eq!(local.api_host, "localhost:5000");
        assert_eq!(scheme, Some(true));
        assert!(local.is_loopback());
        assert!(Registry::parse("127.0.0.1:5000").unwrap().0.is_loopback());
        assert!(!Registry::parse("registry.example.com")
            .unwrap()
            .0
            .is_loopback());
    }

    #[test]
    fn rejects_bad_names() {
        for s in [
            "UPPER/case",
            "a//b",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "a:",
            "a:-tag",
            "a@sha256:short",
            "",
        ] {
            assert!(s.parse::<Reference>().is_err(), "{s:?} should be rejected");
        }
        assert!("a__b/c-d/e.f/g---h".parse::<Reference>().is_ok());
        assert!(validate_tag(&"t".repeat(128)).is_ok());
        assert!(validate_tag(&"t".repeat(129)).is_err());
        assert!(validate_repository(&"a".repeat(256)).is_err());
        assert!(Registry::parse("host/path").is_err());
        assert!(Registry::parse("host:99999").is_err());
    }
}
