//! [`ConfiguredRegistry`]: a real `docker-registry serve` with a configuration
//! the test writes (token auth, pull-through cache, client certificates), on a
//! free loopback port. Often pointed at the storage of a [`super::Registry`]
//! that skopeo filled, so the same images are served with different settings.

use std::fs;
use std::net::TcpStream;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{free_port, lock, parse_access_line, spawn_tied, terminate, Request, START_TIMEOUT};

/// A registry run from a test-written config. Killed on drop.
pub struct ConfiguredRegistry {
    port: u16,
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Mutex<Option<Child>>,
}

impl ConfiguredRegistry {
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
            yaml.contains(&format!("addr: 127.0.0.1:{port}")),
            "the config must set http.addr: 127.0.0.1:{port}:\n{yaml}"
        );
        let config = dir.path().join("config.yml");
        fs::write(&config, yaml).unwrap();
        let reg = ConfiguredRegistry {
            port,
            dir,
            config,
            child: Mutex::new(None),
        };
        reg.spawn_and_wait();
        reg
    }

    fn spawn_and_wait(&self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, _) in std::env::vars_os() {
            if k.as_bytes().starts_with(b"REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let child = spawn_tied(cmd).expect("cannot run docker-registry");
        *lock(&self.child) = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = lock(&self.child)
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(st) = exited {
                panic!("registry exited ({st}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "registry not listening after {START_TIMEOUT:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
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

    /// The directory handed to the config function.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the registry's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Requests from the access log.
    pub fn requests(&self) -> Vec<Request> {
        self.log().lines().filter_map(parse_access_line).collect()
    }

    /// True while the child runs.
    pub fn is_running(&self) -> bool {
        lock(&self.child)
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Stops the registry (SIGTERM, then SIGKILL).
    pub fn stop(&self) {
        if let Some(mut c) = lock(&self.child).take() {
            terminate(&mut c, Duration::from_secs(2));
        }
    }

    /// Starts it again on the same port and config.
    pub fn restart(&self) {
        self.stop();
        self.spawn_and_wait();
    }
}

impl Drop for ConfiguredRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `openssl` helpers for test PKI: a self-signed CA and certificates it signs.
pub mod pki {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::super::run;

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
