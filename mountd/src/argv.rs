//! The effective command line: `mount.regfs` / `mount.fuse.regfs` helper calls
//! (`SOURCE MOUNTPOINT [-o OPTS]`, as mount(8) and /etc/fstab give them)
//! become `regfs mount … --daemon`; mount(8)-style `-o a,b=c` options become
//! flags (`--a --b c`); config files are put ahead of the command line's flags.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::bail;

static EFFECTIVE: OnceLock<Vec<OsString>> = OnceLock::new();

/// mount(8) options with no regfs meaning: the filesystem is read-only and
/// always nodev/nosuid; fstab and systemd bookkeeping.
const IGNORED: &[&str] = &[
    "ro",
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "_netdev",
    "nofail",
    "sync",
    "async",
];

/// The arguments clap should parse (also what `--daemon` re-executes).
pub fn effective() -> &'static [OsString] {
    EFFECTIVE.get_or_init(|| match rewrite(std::env::args_os().collect()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("regfs: {e:#}");
            std::process::exit(1);
        }
    })
}

fn is_helper(argv0: &OsString) -> bool {
    let name = Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    name == "mount.regfs" || name == "mount.fuse.regfs"
}

/// Rewrite `argv` (see the module doc).
pub fn rewrite(argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    // A `--daemon` child is handed the already effective arguments.
    if crate::readiness::is_daemon_child() {
        return Ok(argv);
    }
    let mut args: Vec<OsString> = argv;
    if args.first().is_some_and(is_helper) {
        // mount.fuse.regfs SOURCE MOUNTPOINT [-o OPTS] [-n] [-s] [-f] [-v]
        let mut out: Vec<OsString> = vec!["regfs".into(), "mount".into()];
        let mut it = args.into_iter().skip(1);
        while let Some(a) = it.next() {
            match a.to_str() {
                Some("-o") => {
                    out.push("-o".into());
                    out.extend(it.next());
                }
                Some("-n" | "-s" | "-f" | "-v") => {}
                _ => out.push(a),
            }
        }
        out.push("--daemon".into());
        args = out;
    }
    if args.get(1).and_then(|a| a.to_str()) != Some("mount") {
        return Ok(args);
    }
    // Config files first, then the command line (later flags win).
    let mut config: Option<PathBuf> = None;
    let mut rest: Vec<OsString> = Vec::new();
    let mut it = args.iter().skip(2).cloned();
    while let Some(a) = it.next() {
        let s = a.to_str().unwrap_or("");
        if s == "--config" {
            config = it.next().map(PathBuf::from);
        } else if let Some(v) = s.strip_prefix("--config=") {
            config = Some(PathBuf::from(v));
        } else if s == "-o" {
            let Some(opts) = it.next() else {
                bail!("-o needs a value")
            };
            rest.extend(
                options_to_flags(opts.to_str().unwrap_or(""))?
                    .into_iter()
                    .map(OsString::from),
            );
        } else if let Some(opts) = s
            .strip_prefix("-o")
            .filter(|o| !o.is_empty() && !s.starts_with("--"))
        {
            rest.extend(options_to_flags(opts)?.into_iter().map(OsString::from));
        } else {
            rest.push(a);
        }
    }
    let mut from_config = Vec::new();
    match &config {
        Some(f) => from_config.extend(crate::config::flags_from(f, true)?),
        None => {
            for f in crate::config::default_files() {
                from_config.extend(crate::config::flags_from(&f, false)?);
            }
        }
    }
    let mut out: Vec<OsString> = args[..2].to_vec();
    out.extend(from_config.into_iter().map(OsString::from));
    out.extend(rest);
    Ok(out)
}

/// `ro,allow_other,cache_size=10G` → `--allow-other --cache-size 10G`.
pub fn options_to_flags(opts: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for o in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let (k, v) = match o.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (o, None),
        };
        if IGNORED.contains(&k) || k.starts_with("x-") || k == "comment" {
            continue;
        }
        if matches!(k, "config" | "password_stdin" | "username") {
            bail!("-o {k}: not a mount option");
        }
        out.push(format!("--{}", k.replace('_', "-")));
        out.extend(v.map(str::to_string));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn mount_options() {
        assert_eq!(
            options_to_flags("ro,allow_other,cache_size=10G,tag_ttl=5,_netdev,x-systemd.automount")
                .unwrap(),
            ["--allow-other", "--cache-size", "10G", "--tag-ttl", "5"]
        );
        assert!(options_to_flags("username=x").is_err());
    }

    #[test]
    fn helper_argv() {
        let got = rewrite(os(&[
            "/sbin/mount.fuse.regfs",
            "127.0.0.1:5000",
            "/mnt",
            "-o",
            "rw,cache_dir=/c",
            "-n",
        ]))
        .unwrap();
        let tail: Vec<_> = got
            .iter()
            .skip(2)
            .filter(|a| !a.to_str().unwrap().starts_with("--cache-size"))
            .cloned()
            .collect();
        assert_eq!(got[..2], os(&["regfs", "mount"])[..]);
        assert!(
            tail.ends_with(&os(&[
                "127.0.0.1:5000",
                "/mnt",
                "--cache-dir",
                "/c",
                "--daemon"
            ])),
            "{got:?}"
        );
        // Other subcommands are untouched.
        assert_eq!(
            rewrite(os(&["regfs", "unmount", "/mnt"])).unwrap(),
            os(&["regfs", "unmount", "/mnt"])
        );
    }
}
