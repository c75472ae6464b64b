//! [`ConfiguredRegistry`]: a real `docker-registry serve` with a configuration
//! the test writes (token auth, pull-through cache, client certificates), on a
//! free loopback port. Often pointed at the storage of a [`super::registry::Registry`]
//! that skopeo filled, so the same images are served with different settings.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use super::process::free_port;
use super::served::{Request, Served};

/// A registry run from a test-written config. Killed on drop.
pub struct ConfiguredRegistry {
    port: u16,
    config: PathBuf,
    served: Served,
    // Last: the directory outlives the process writing into it.
    dir: tempfile::TempDir,
}

impl ConfiguredRegistry {
    /// A pull-through cache (`proxy.remoteurl`) of the registry at
    /// `upstream` (its URL: `Registry::url("")`), with its own storage.
    pub fn pull_through(upstream: &str) -> ConfiguredRegistry {
        let up = upstream;
        ConfiguredRegistry::start(|port, dir| {
            format!(
                "storage:\n  filesystem:\n    rootdirectory: {}/storage\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: m-{port}\nproxy:\n  remoteurl: {up}\n",
                dir.display()
            )
        })
    }

    /// Starts `docker-registry serve` with `http.addr` on a free port. `config(port,
    /// dir)` returns the rest of the YAML (everything but `version` and
    /// `http.addr`): storage, auth, proxy, tls… `dir` is a fresh directory for its
    /// files. Waits until the port accepts connections (20 s, else panics with the log).
    pub fn start(config: impl Fn(u16, &Path) -> String) -> ConfiguredRegistry {
        let dir = tempfile::Builder::new()
            .prefix(&format!("regfs-registry-{}-cfg-", std::process::id()))
            .tempdir()
            .expect("registry tempdir");
        let port = free_port();
        let yaml = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n{}",
            config(port, dir.path())
        );
        assert!(
            yaml.contains(&format!("addr: 127.0.0.1:{port}"))
                || yaml.contains(&format!("addr: 0.0.0.0:{port}")),
            "the config must set http.addr: 127.0.0.1:{port} (or 0.0.0.0:{port}):\n{yaml}"
        );
        let config = dir.path().join("config.yml");
        fs::write(&config, yaml).unwrap();
        let reg = ConfiguredRegistry {
            port,
            config,
            served: Served::new(dir.path().join("registry.log")),
            dir,
        };
        reg.spawn_and_wait();
        reg
    }

    /// A registry serving `storage` over TLS with `server` (key, certificate)
    /// on `host` (`127.0.0.1`, or `0.0.0.0` for this machine's other
    /// addresses too); `tls_extra` is more YAML under `http.tls`, indented
    /// four spaces (`clientcas`…).
    pub fn start_tls(
        storage: &Path,
        host: &str,
        server: &(PathBuf, PathBuf),
        tls_extra: &str,
    ) -> ConfiguredRegistry {
        ConfiguredRegistry::start(|port, _| {
            format!(
                "storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}:{port}\n  secret: t-{port}\n  tls:\n    certificate: {}\n    key: {}\n{tls_extra}",
                storage.display(),
                server.1.display(),
                server.0.display(),
            )
        })
    }

    fn spawn_and_wait(&self) {
        let port = self.port;
        if let Err(e) = self.served.spawn_and_wait(&self.config, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        }) {
            panic!("registry on port {port}: {e}");
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.served.log()
    }

    /// Requests from the access log.
    pub fn requests(&self) -> Vec<Request> {
        self.served.requests()
    }

    /// Stops the registry (SIGTERM, then SIGKILL).
    pub fn stop(&self) {
        self.served.stop();
    }
}

/// `openssl` helpers for test PKI: a self-signed CA and certificates it signs.
pub mod pki {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::super::process::run;

    /// Writes `NAME.key` and a self-signed `NAME.crt` (CN = `cn`) into `dir`.
    pub fn self_signed(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
        let key = dir.join(format!("{name}.key"));
        let crt = dir.join(format!("{name}.crt"));
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .arg("-subj")
            .arg(format!("/CN={cn}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt));
        (key, crt)
    }

    /// Writes `NAME.key` and `NAME.crt` signed by `ca` into `dir`, with the
    /// subjectAltName `san` (e.g. `IP:127.0.0.1`) and extended key usage `eku`
    /// (`serverAuth` or `clientAuth`).
    pub fn signed(
        dir: &Path,
        name: &str,
        ca: (&Path, &Path),
        san: &str,
        eku: &str,
    ) -> (PathBuf, PathBuf) {
        let key = dir.join(format!("{name}.key"));
        let csr = dir.join(format!("{name}.csr"));
        let crt = dir.join(format!("{name}.crt"));
        let ext = dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!("subjectAltName={san}\nextendedKeyUsage={eku}\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        run(Command::new("openssl")
            .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj"])
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(ca.1)
            .arg("-CAkey")
            .arg(ca.0)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&crt));
        (key, crt)
    }
}
