//! The config file: `/etc/regfs/config.toml`, then `~/.config/regfs/config.toml`
//! (or only `--config FILE`), with the same keys as `regfs mount`'s flags
//! (`cache_size = "10G"`, `mirror = ["http://m:5000"]`, `allow_other = true`…).
//! Each key becomes its flag ahead of the command line's, so flags win.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The files read when `--config` is not given, in order (later wins).
pub fn default_files() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/etc/regfs/config.toml")];
    let user = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(d) = user {
        v.push(d.join("regfs/config.toml"));
    }
    v
}

/// The flags a config file stands for. A missing file is no flags.
pub fn flags_from(path: &Path, must_exist: bool) -> anyhow::Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("config file {}", path.display())),
    };
    flags_from_str(&text).with_context(|| format!("config file {}", path.display()))
}

/// The flags of a config file's text.
pub fn flags_from_str(text: &str) -> anyhow::Result<Vec<String>> {
    let table: toml::Table = toml::from_str(text)?;
    let mut out = Vec::new();
    for (key, value) in table {
        if matches!(
            key.as_str(),
            "registry" | "mountpoint" | "config" | "password_stdin" | "username"
        ) {
            bail!("{key:?} cannot be set in the config file");
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let mut push = |v: &toml::Value| -> anyhow::Result<()> {
            match v {
                toml::Value::Boolean(true) => out.push(flag.clone()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => out.extend([flag.clone(), s.clone()]),
                toml::Value::Integer(i) => out.extend([flag.clone(), i.to_string()]),
                other => bail!("{key}: unsupported value {other}"),
            }
            Ok(())
        };
        match &value {
            toml::Value::Array(items) => items.iter().try_for_each(&mut push)?,
            v => push(v)?,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_flags() {
        let f = flags_from_str(
            "cache_size = \"1G\"\ntag_ttl = 7\nallow_other = true\nplain_http = false\nmirror = [\"http://a\", \"http://b\"]\n",
        )
        .unwrap();
        assert_eq!(
            f,
            [
                "--cache-size",
                "1G",
                "--tag-ttl",
                "7",
                "--allow-other",
                "--mirror",
                "http://a",
                "--mirror",
                "http://b"
            ]
        );
        assert!(flags_from_str("registry = \"x\"").is_err());
        assert!(flags_from_str("x = 1.5").is_err());
        assert!(flags_from(Path::new("/nonexistent/regfs.toml"), false)
            .unwrap()
            .is_empty());
        assert!(flags_from(Path::new("/nonexistent/regfs.toml"), true).is_err());
    }
}
