//! [`Mount::with_env`]: a mount whose daemon gets extra environment variables
//! (`PATH` with a credential helper, `DOCKER_CONFIG`, `REGISTRY_AUTH_FILE`,
//! `RUST_LOG`, `HTTPS_PROXY`…), without touching the test process's environment.

use std::ffi::OsString;

use super::{tempdir, Mount};

impl Mount {
    /// Like [`Mount::with_args`], with `env` added to the daemon's environment
    /// (later entries win; `RUST_LOG` here overrides the harness default).
    pub fn with_env(
        addr: &str,
        args: Vec<OsString>,
        stdin: Option<String>,
        env: Vec<(OsString, OsString)>,
    ) -> Mount {
        // The pid lets scripts/test tell stale mounts from live ones.
        let mountpoint = tempdir(&format!("mnt-{}", std::process::id()));
        let cache = tempdir("cache");
        let logdir = tempdir("mountlog");
        let mut full: Vec<OsString> = vec!["mount".into(), addr.into(), mountpoint.path().into()];
        full.push("--cache-dir".into());
        full.push(cache.path().into());
        full.extend(args);
        let mut m = Mount {
            args: full,
            stdin,
            env,
            child: None,
            log_path: logdir.path().join("regfs.log"),
            mountpoint,
            cache,
            logdir,
        };
        m.start();
        m
    }
}

/// `(key, value)` pairs as `OsString`s, for [`Mount::with_env`].
pub fn env_vars<K: Into<OsString>, V: Into<OsString>>(
    vars: impl IntoIterator<Item = (K, V)>,
) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}
