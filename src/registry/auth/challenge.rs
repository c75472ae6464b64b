//! `WWW-Authenticate` parsing (RFC 9110 §11.6.1): one or more challenges, each a
//! case-insensitive scheme followed by a token68 or comma-separated `name=value`
//! params whose values are tokens or quoted strings with `\` escapes.
//!
//! Malformed input yields [`Error::Invalid`], never a panic.

use crate::error::{Error, Result};

/// One authentication challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, lowercased (`bearer`, `basic`).
    pub scheme: String,
    /// Parameters in order; names lowercased, values unescaped.
    pub params: Vec<(String, String)>,
    /// A token68 credential-like value, when the challenge has one instead of params.
    pub token68: Option<String>,
}

impl Challenge {
    /// The value of parameter `name` (case-insensitive), if present.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Whether this is a Bearer challenge.
    pub fn is_bearer(&self) -> bool {
        self.scheme == "bearer"
    }
    /// Whether this is a Basic challenge.
    pub fn is_basic(&self) -> bool {
        self.scheme == "basic"
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token68(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn bad(&self, why: &str) -> Error {
        Error::invalid(format!(
            "malformed WWW-Authenticate header at byte {}: {why}",
            self.i
        ))
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn ws_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }
    fn token(&mut self) -> &'a str {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }
    fn quoted(&mut self) -> Result<String> {
        debug_assert_eq!(self.peek(), Some(b'"'));
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.bad("unterminated quoted string")),
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        None => return Err(self.bad("unterminated escape")),
                        Some(c) => {
                            out.push(c);
                            self.i += 1;
                        }
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| self.bad("quoted string is not UTF-8"))
    }
    /// At the start of a challenge's content: a token68 (`abc==`) followed by end or comma?
    fn try_token68(&mut self) -> Option<String> {
        let start = self.i;
        let mut j = self.i;
        while j < self.b.len() && is_token68(self.b[j]) {
            j += 1;
        }
        if j == start {
            return None;
        }
        while j < self.b.len() && self.b[j] == b'=' {
            j += 1;
        }
        let end = j;
        while j < self.b.len() && matches!(self.b[j], b' ' | b'\t') {
            j += 1;
        }
        if j == self.b.len() || self.b[j] == b',' {
            self.i = end;
            Some(self.s[start..end].to_string())
        } else {
            None
        }
    }
}

/// Parse a whole `WWW-Authenticate` value into its challenges (at least one).
pub fn parse(header: &str) -> Result<Vec<Challenge>> {
    let mut p = Parser {
        s: header,
        b: header.as_bytes(),
        i: 0,
    };
    let mut out: Vec<Challenge> = Vec::new();
    p.ws_commas();
    while p.peek().is_some() {
        let scheme = p.token();
        if scheme.is_empty() {
            return Err(p.bad("expected an auth scheme"));
        }
        let mut ch = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
            token68: None,
        };
        match p.peek() {
            None => {
                out.push(ch);
                break;
            }
            Some(b' ' | b'\t') => p.ws(),
            Some(b',') => {}
            Some(_) => return Err(p.bad("expected a space after the auth scheme")),
        }
        if let Some(t) = p.try_token68() {
            ch.token68 = Some(t);
        } else {
            // auth-params until a token not followed by '=' (the next challenge).
            loop {
                p.ws_commas();
                if p.peek().is_none() {
                    break;
                }
                let save = p.i;
                let name = p.token();
                if name.is_empty() {
                    return Err(p.bad("expected a parameter name"));
                }
                p.ws();
                if p.peek() != Some(b'=') {
                    p.i = save;
                    break;
                }
                p.i += 1;
                p.ws();
                let value = match p.peek() {
                    Some(b'"') => p.quoted()?,
                    _ => {
                        let v = p.token();
                        if v.is_empty() {
                            return Err(p.bad("expected a parameter value"));
                        }
                        v.to_string()
                    }
                };
                ch.params.push((name.to_ascii_lowercase(), value));
                p.ws();
                match p.peek() {
                    None | Some(b',') => {}
                    Some(_) => return Err(p.bad("expected ',' between parameters")),
                }
            }
        }
        out.push(ch);
        p.ws_commas();
    }
    if out.is_empty() {
        return Err(Error::invalid("empty WWW-Authenticate header"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_with_params() {
        let c = parse(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#).unwrap();
        assert_eq!(c.len(), 1);
        assert!(c[0].is_bearer());
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("SERVICE"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/python:pull"));
    }

    #[test]
    fn basic_and_case() {
        let c = parse(r#"BASIC realm="Registry Realm""#).unwrap();
        assert!(c[0].is_basic());
        assert_eq!(c[0].param("realm"), Some("Registry Realm"));
        let c = parse("Basic").unwrap();
        assert!(c[0].is_basic() && c[0].params.is_empty());
    }

    #[test]
    fn quoted_commas_escapes_and_spaces() {
        let c = parse(
            r#"Bearer realm = "https://x/token?a=1,b=2" , scope="repository:a/b:pull,push", error="say \"hi\" \\ ok""#,
        )
        .unwrap();
        assert_eq!(c[0].param("realm"), Some("https://x/token?a=1,b=2"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(c[0].param("error"), Some(r#"say "hi" \ ok"#));
    }

    #[test]
    fn multiple_challenges_and_token68() {
        let c =
            parse(r#"Basic realm="a", Bearer realm="https://t/", service=reg, Negotiate abc+/=="#)
                .unwrap();
        assert_eq!(c.len(), 3);
        assert!(c[0].is_basic());
        assert_eq!(c[1].param("service"), Some("reg"));
        assert_eq!(c[2].scheme, "negotiate");
        assert_eq!(c[2].token68.as_deref(), Some("abc+/=="));
        let c = parse("Basic, Bearer realm=x").unwrap();
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for s in [
            "",
            "   ",
            "=",
            r#"Bearer realm="unterminated"#,
            r#"Bearer realm="x\"#,
            "Bearer realm=x y=z",
            "\"quoted\"",
            "Bearer realm=\"a\"junk",
            "Bearer ,,, =x",
        ] {
            assert!(parse(s).is_err(), "{s:?} should be rejected");
        }
        // `realm=` is, by the grammar, a token68; it has no realm param.
        let c = parse("Bearer realm=").unwrap();
        assert_eq!(c[0].param("realm"), None);
        // Non-ASCII and odd bytes must not panic either way.
        for s in [
            "Bearer realm=\"ünï\"",
            "Bearer é",
            "B\u{0}",
            "Bearer realm=\"\\é\"",
        ] {
            let _ = parse(s);
        }
    }
}
