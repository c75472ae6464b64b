use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(&d.path().join("root"), &d.path().join("mnt")).unwrap();
    (d, s)
}

#[test]
fn prepare_commit_chain_and_errors() {
    let (_d, s) = store();
    s.create(Kind::Active, "a", "", BTreeMap::new()).unwrap();
    assert!(matches!(
        s.create(Kind::Active, "a", "", BTreeMap::new()),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        s.create(Kind::Active, "b", "a", BTreeMap::new()),
        Err(Error::FailedPrecondition(_))
    ));
    assert!(matches!(
        s.create(Kind::Active, "b", "nope", BTreeMap::new()),
        Err(Error::NotFound(_))
    ));
    s.commit("base", "a", BTreeMap::new()).unwrap();
    assert!(matches!(s.stat("a"), Err(Error::NotFound(_))));
    assert_eq!(s.stat("base").unwrap().kind, Kind::Committed);
    s.add_remote(
        "r",
        "base",
        BTreeMap::new(),
        "lab/x@sha256:m/layers/2-sha256:l",
    )
    .unwrap();
    let c = s.create(Kind::Active, "ctr", "r", BTreeMap::new()).unwrap();
    assert_eq!(c.parents.len(), 2);
    let fs = s.layout().fs(c.parents[0].id);
    assert_eq!(
        std::fs::read_link(fs).unwrap(),
        _d.path().join("mnt/lab/x@sha256:m/layers/2-sha256:l")
    );
    assert!(matches!(s.remove("r"), Err(Error::FailedPrecondition(_))));
    assert!(matches!(
        s.mountable("r"),
        Err(Error::FailedPrecondition(_))
    ));
    s.remove("ctr").unwrap();
    s.remove("r").unwrap();
}

#[test]
fn survives_reopen_and_updates_labels() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    {
        let s = Store::open(&root, d.path()).unwrap();
        let mut l = BTreeMap::new();
        l.insert("a".to_string(), "1".to_string());
        l.insert("b".to_string(), "2".to_string());
        s.create(Kind::View, "v", "", l).unwrap();
        let mut new = BTreeMap::new();
        new.insert("c".to_string(), "3".to_string());
        let u = s
            .update("v", new, &["labels.c".into(), "labels.a".into()])
            .unwrap();
        assert_eq!(u.labels.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert!(matches!(
            s.update("v", BTreeMap::new(), &["parent".into()]),
            Err(Error::InvalidArgument(_))
        ));
    }
    let s = Store::open(&root, d.path()).unwrap();
    assert_eq!(s.stat("v").unwrap().labels.len(), 2);
    std::fs::create_dir_all(s.layout().dir(0)).unwrap();
    assert_eq!(s.cleanup().unwrap(), 1);
}

#[test]
fn remote_links_follow_the_mount_to_a_new_place() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let id = {
        let s = Store::open(&root, &d.path().join("mnt-a")).unwrap();
        s.add_remote("r", "", BTreeMap::new(), "lab/x@sha256:m/layers/1-sha256:l")
            .unwrap();
        s.stat("r").unwrap().id
    };
    let s = Store::open(&root, &d.path().join("mnt-b")).unwrap();
    assert_eq!(
        std::fs::read_link(s.layout().fs(id)).unwrap(),
        d.path().join("mnt-b/lab/x@sha256:m/layers/1-sha256:l")
    );
    // Removing it never follows the link into the mount.
    std::fs::create_dir_all(d.path().join("mnt-b/lab/x@sha256:m/layers/1-sha256:l/keep")).unwrap();
    s.remove("r").unwrap();
    assert!(!s.layout().dir(id).exists());
    assert!(d
        .path()
        .join("mnt-b/lab/x@sha256:m/layers/1-sha256:l/keep")
        .is_dir());
}
