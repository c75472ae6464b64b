//! The first level of the layer store: `base64(image reference)`, as
//! containers/storage writes it (`base64.StdEncoding` of the reference's
//! full name, e.g. `127.0.0.1:5000/lab/python:3.11`). The standard alphabet
//! has `/`, so an encoded name may span several path components; each is a
//! directory until a component that is a digest follows.

use std::sync::Arc;

use base64::Engine;

use crate::error::{Error, Result};
use crate::reference::{Reference, Registry, Selector};

/// Whether `name` can be (part of) a standard-base64 string: a non-empty
/// run of `A–Z a–z 0–9 + =`.
pub(super) fn is_part(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'=')
}

/// The repository and tag or digest that `encoded` names, if it is the
/// standard-base64 encoding of a reference to an image of `registry`.
pub(super) fn decode(encoded: &str, registry: &Registry) -> Result<(Arc<str>, Selector)> {
    let not_found =
        |why: &str| Error::NotFound(format!("layer store reference {encoded:?}: {why}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| not_found("not base64"))?;
    let text = String::from_utf8(bytes).map_err(|_| not_found("not UTF-8"))?;
    let r: Reference = text
        .parse()
        .map_err(|_| not_found("not an image reference"))?;
    let host = r
        .registry
        .as_deref()
        .ok_or_else(|| not_found("no registry in the reference"))?;
    let (named, _) = Registry::parse(host).map_err(|_| not_found("bad registry"))?;
    // A mount of every registry (`*`) names repositories `host/path`.
    let any = registry.name == crate::registry::router::ANY_REGISTRY;
    if !any && named.name != registry.name {
        return Err(not_found(&format!("another registry than {registry}")));
    }
    let r = r.normalized_for(&named);
    let repo = match any {
        true => format!("{}/{}", named.name, r.repository),
        false => r.repository.clone(),
    };
    Ok((Arc::from(repo.as_str()), r.selector()))
}

/// The standard-base64 name of `reference` (tests, documentation).
pub fn encode(reference: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> Registry {
        Registry::parse(s).unwrap().0
    }

    #[test]
    fn decodes_what_containers_storage_encodes() {
        let r = reg("127.0.0.1:5000");
        let (repo, sel) = decode(&encode("127.0.0.1:5000/lab/python:3.11"), &r).unwrap();
        assert_eq!(&*repo, "lab/python");
        assert_eq!(sel, Selector::Tag("3.11".into()));
        let d = "sha256:".to_string() + &"ab".repeat(32);
        let (_, sel) = decode(&encode(&format!("127.0.0.1:5000/lab/python:3.11@{d}")), &r).unwrap();
        assert_eq!(sel, Selector::Digest(d.parse().unwrap()));
        // Docker Hub's one-component names live in library/.
        let (repo, _) = decode(&encode("docker.io/python:3.11"), &reg("docker.io")).unwrap();
        assert_eq!(&*repo, "library/python");
        // A mount of every registry: the repository names its registry.
        let any = Registry {
            name: "*".into(),
            api_host: String::new(),
        };
        let (repo, _) = decode(&encode("127.0.0.1:5000/lab/python:3.11"), &any).unwrap();
        assert_eq!(&*repo, "127.0.0.1:5000/lab/python");
    }

    #[test]
    fn refuses_other_registries_and_garbage() {
        let r = reg("127.0.0.1:5000");
        assert!(decode(&encode("127.0.0.1:5001/lab/python:3.11"), &r).is_err());
        assert!(decode(&encode("lab/python:3.11"), &r).is_err());
        assert!(decode("%%%", &r).is_err());
        assert!(decode(&encode("127.0.0.1:5000/UPPER:x"), &r).is_err());
        assert!(
            is_part(b"MTI3LjAu+=") && !is_part(b"") && !is_part(b"a/b") && !is_part(b"sha256:1")
        );
    }
}
