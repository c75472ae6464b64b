//! [`TokenServer`]: a docker token-auth server (docker token spec + the OAuth2
//! refresh flow) on loopback, signing short-lived RS256 JWTs with `openssl`.
//!
//! A distribution registry started with [`TokenServer::registry_auth_yaml`]
//! trusts its certificate (`rootcertbundle`); each token carries the
//! certificate in its `x5c` header.
//!
//! - `GET /token?service=…&scope=…` with `Authorization: Basic` (the
//!   configured user and password): a token for the requested scopes.
//! - `POST /token` (form: `grant_type=refresh_token`, `refresh_token`,
//!   `service`, `scope`, `client_id`): a token if the refresh token matches.
//!
//! Anything else is 401. Every request is recorded ([`TokenServer::requests`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;

use super::configured::pki;

/// The `service` the token server and the registry agree on.
pub const SERVICE: &str = "regfs-test-registry";
/// The token issuer.
pub const ISSUER: &str = "regfs-test-issuer";
/// distribution accepts tokens this long past `exp` (clock-skew leeway); the
/// server subtracts it so a token really stops working after `expires_in`.
pub const REGISTRY_LEEWAY_SECS: u64 = 60;

/// One request the token server answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// The form body of a POST.
    pub body: String,
    /// Whether it was granted.
    pub granted: bool,
}

struct Config {
    user: String,
    password: String,
    refresh_token: String,
    expires_in: u64,
}

/// A running token server. Stops accepting when dropped (the thread lingers
/// blocked in accept, harmless).
pub struct TokenServer {
    port: u16,
    cert: PathBuf,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    /// Starts a server granting tokens valid for `expires_in` seconds to
    /// `user`/`password` (GET) and to `refresh_token` (POST).
    pub fn start(user: &str, password: &str, refresh_token: &str, expires_in: u64) -> TokenServer {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = pki::self_signed(dir.path(), "token-signer", "regfs token signer");
        let der_path = dir.path().join("token-signer.der");
        super::process::run(
            Command::new("openssl")
                .args(["x509", "-outform", "DER", "-in"])
                .arg(&cert)
                .arg("-out")
                .arg(&der_path),
        );
        let x5c =
            base64::engine::general_purpose::STANDARD.encode(std::fs::read(&der_path).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let cfg = Arc::new(Config {
            user: user.into(),
            password: password.into(),
            refresh_token: refresh_token.into(),
            expires_in,
        });
        let (reqs, key2) = (requests.clone(), key.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (reqs, cfg, key, x5c) = (reqs.clone(), cfg.clone(), key2.clone(), x5c.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &cfg, &key, &x5c, &reqs);
                });
            }
        });
        TokenServer {
            port,
            cert,
            requests,
            _dir: dir,
        }
    }

    /// The realm URL (`http://127.0.0.1:PORT/token`).
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The `auth:` section for a distribution registry config.
    pub fn registry_auth_yaml(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm(),
            self.cert.display()
        )
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Tokens handed out so far.
    pub fn granted(&self) -> usize {
        self.requests().iter().filter(|r| r.granted).count()
    }
}

fn serve(
    conn: TcpStream,
    cfg: &Config,
    key: &Path,
    x5c: &str,
    reqs: &Mutex<Vec<TokenRequest>>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (mut len, mut authz) = (0usize, String::new());
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "authorization" => authz = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let form: Vec<(String, String)> = url::form_urlencoded::parse(if method == "POST" {
        body.as_bytes()
    } else {
        query.as_bytes()
    })
    .into_owned()
    .collect();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", cfg.user, cfg.password))
    );
    let granted = get("service").as_deref() == Some(SERVICE)
        && match method.as_str() {
            "GET" => authz == basic,
            "POST" => {
                get("grant_type").as_deref() == Some("refresh_token")
                    && get("refresh_token").as_deref() == Some(cfg.refresh_token.as_str())
            }
            _ => false,
        };
    // GET repeats `scope`; the OAuth2 form joins them with spaces.
    let scopes: Vec<String> = form
        .iter()
        .filter(|(n, _)| n == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    reqs.lock().unwrap().push(TokenRequest {
        method: method.clone(),
        target,
        body,
        granted,
    });
    let mut w = conn;
    if !granted {
        let msg = br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
        write!(
            w,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            msg.len()
        )?;
        return w.write_all(msg);
    }
    let subject = if method == "POST" {
        "refresh-user"
    } else {
        cfg.user.as_str()
    };
    let token = sign(key, x5c, subject, &scopes, cfg.expires_in);
    let field = if method == "POST" {
        "access_token"
    } else {
        "token"
    };
    let out = serde_json::json!({ field: token, "expires_in": cfg.expires_in }).to_string();
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
        out.len()
    )
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// An RS256 JWT granting `scopes` (`type:name:actions`), signed by `key`.
fn sign(key: &Path, x5c: &str, subject: &str, scopes: &[String], expires_in: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let (kind, rest) = s.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(serde_json::json!({
                "type": kind, "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }))
        })
        .collect();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": subject, "aud": SERVICE,
        "exp": now + expires_in - REGISTRY_LEEWAY_SECS.min(now),
        "nbf": now - 1, "iat": now,
        "jti": format!("{now}-{}", rand_suffix()),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst -sign failed");
    format!("{input}.{}", b64url(&out.stdout))
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
