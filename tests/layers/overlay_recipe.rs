//! The README's overlay recipe, run as written: an overlay mount of an
//! image's `layers/` (paths full of `:`, escaped as `\:`) gives `rootfs/`.

use crate::harness;

use std::fs;
use std::path::Path;
use std::process::Command;

use harness::*;

/// The shell block after `<!-- overlay-recipe -->` in README.md.
fn recipe() -> String {
    let readme = fs::read_to_string(repo_root().join("README.md")).unwrap();
    let at = readme
        .find("<!-- overlay-recipe -->")
        .expect("README.md has the overlay recipe marker");
    let rest = &readme[at..];
    let start = rest
        .find("```sh\n")
        .expect("a ```sh block after the marker")
        + 6;
    let len = rest[start..].find("```").expect("the block ends");
    rest[start..start + len].to_string()
}

#[test]
fn readme_overlay_recipe_gives_rootfs() {
    require_fuse!();
    let script = recipe();
    assert!(
        script.contains("/mnt/reg") && script.contains("/tmp/merged"),
        "{script}"
    );
    let reg = lab().image("python:3.11");
    let m = Mount::new(reg, &[]);
    let target = tempdir("overlay");
    let script = script
        .replace("/mnt/reg", m.path().to_str().unwrap())
        .replace("/tmp/merged", target.path().to_str().unwrap());
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .unwrap();
    let mounted = mount_fstype(target.path()).as_deref() == Some("overlay");
    let result = std::panic::catch_unwind(|| {
        assert!(
            out.status.success() && mounted,
            "the recipe failed ({}):\n{script}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let img = m.path().join("lab/python:3.11");
        let mut expected = snapshot(&img.join("rootfs"));
        let mut actual = snapshot(target.path());
        // The overlay root takes its mode from the top layer's root; compare below it.
        expected.remove(Path::new("/"));
        actual.remove(Path::new("/"));
        assert_same_tree(&expected, &actual);
    });
    if mounted {
        let _ = Command::new("umount").arg(target.path()).status();
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
