//! `scripts/install` into a DESTDIR puts every file where a Debian user
//! expects it, and the installed binary runs.

use crate::harness;

use std::fs;
use std::process::Command;

use harness::*;

#[test]
fn install_into_destdir() {
    let dest = tempdir("install");
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/install"))
        .env("DESTDIR", dest.path())
        .env("PREFIX", "/usr/local")
        .env("REGFS_BIN", regfs_bin())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/install failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = dest.path();
    let bin = d.join("usr/local/bin/regfs");
    let v = Command::new(&bin).arg("--version").output().unwrap();
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("regfs "));
    assert_eq!(
        fs::read_link(d.join("sbin/mount.fuse.regfs")).unwrap(),
        std::path::Path::new("/usr/local/bin/regfs")
    );
    let man = fs::read_to_string(d.join("usr/local/share/man/man1/regfs.1")).unwrap();
    assert!(man.contains(".TH regfs"), "{}", &man[..man.len().min(200)]);
    let bash =
        fs::read_to_string(d.join("usr/local/share/bash-completion/completions/regfs")).unwrap();
    assert!(bash.contains("complete") && bash.contains("regfs"));
    assert!(
        fs::metadata(d.join("usr/local/share/zsh/vendor-completions/_regfs"))
            .unwrap()
            .len()
            > 0
    );
    assert!(
        fs::metadata(d.join("usr/local/share/fish/vendor_completions.d/regfs.fish"))
            .unwrap()
            .len()
            > 0
    );
    let unit = fs::read_to_string(d.join("usr/local/lib/systemd/system/regfs@.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/regfs mount ${REGISTRY} ${MOUNTPOINT} $OPTIONS")
            && unit.contains("ExecReload=/usr/local/bin/regfs restart ${MOUNTPOINT}"),
        "{unit}"
    );
    assert!(unit.contains("EnvironmentFile=/etc/regfs/%i.env"), "{unit}");
    assert!(d.join("usr/local/share/doc/regfs/example.env").is_file());
    // Nothing outside DESTDIR's prefix and /sbin.
    let mut top: Vec<String> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["sbin", "usr"]);
}
