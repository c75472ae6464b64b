//! Entry-point warming over the in-process registry: an eStargz image
//! holding this machine's `/usr/bin/true` with its dynamic loader and
//! libraries (laid out as a Debian image lays them out, `/lib` a symlink)
//! gets exactly those files (and `/etc/passwd`, which runtimes read)
//! fetched, verified and cached; a library nobody
//! needs stays remote; a gzip image is left alone.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cache::{Section, Store};
use crate::content::Content;
use crate::digest::Digest;
use crate::exec_deps::exec_deps;
use crate::fs::{Fs, FsConfig};
use crate::layer::testutil::TarW;
use crate::layer::Limits;
use crate::registry::{LayerBlob, MemoryRegistry};

/// A host file by its path (symlinks followed), or the first of `dirs`/`name`.
fn host_file(dirs: &[&str], name: &str) -> Vec<u8> {
    dirs.iter()
        .find_map(|d| std::fs::read(format!("{d}/{name}")).ok())
        .unwrap_or_else(|| panic!("{name} not found on this machine"))
}

fn fs_of(reg: Arc<MemoryRegistry>, store: Arc<Store>) -> Fs {
    Fs::new(
        Content::new(reg, store, 1_000_000, Limits::default()),
        FsConfig {
            platform: "linux/amd64".parse().unwrap(),
            tag_ttl: Duration::from_secs(60),
            mount_time: SystemTime::UNIX_EPOCH,
        },
    )
}

fn cached(store: &Store, data: &[u8]) -> bool {
    store
        .get(Section::Chunk, &Digest::sha256_of(data))
        .is_some()
}

/// An eStargz image of this machine's `/usr/bin/true`, its loader and
/// libraries, laid out as a Debian image lays them out.
struct TrueImage {
    reg: Arc<MemoryRegistry>,
    image: Digest,
    /// The two layers' blob digests, base first.
    layers: [Digest; 2],
    program: Vec<u8>,
    interp: String,
    interp_data: Vec<u8>,
    libs: Vec<(String, Vec<u8>)>,
    unused: Vec<u8>,
    ld_cache: Vec<u8>,
    passwd: Vec<u8>,
    /// The locale the image's `LANG` names, another one, the time zone.
    locale: Vec<u8>,
    other_locale: Vec<u8>,
    zone: Vec<u8>,
    run: serde_json::Value,
}

fn true_image() -> TrueImage {
    let program = std::fs::read("/usr/bin/true").expect("/usr/bin/true");
    let deps = exec_deps(&program).expect("/usr/bin/true is a dynamic ELF program");
    let interp = deps.interpreter.clone().expect("PT_INTERP");
    let interp_data = std::fs::read(&interp).expect("the loader");
    let lib_dirs = [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib",
    ];
    let libs: Vec<(String, Vec<u8>)> = deps
        .needed
        .iter()
        .map(|n| (n.clone(), host_file(&lib_dirs, n)))
        .collect();
    assert!(!libs.is_empty(), "true needs libc");
    let unused = b"a library nobody links".to_vec();
    let ld_cache = b"ld.so.cache stand-in".to_vec();

    // Layer 1: the libraries under usr/lib, /lib a symlink to it, the loader
    // at its PT_INTERP path; layer 2: the program and the loader's cache.
    let mut base = TarW::new();
    base.dir(b"usr", 0o755)
        .dir(b"usr/lib", 0o755)
        .dir(b"usr/lib/x86_64-linux-gnu", 0o755);
    base.symlink(b"lib", b"usr/lib");
    for (name, data) in &libs {
        base.file(format!("usr/lib/x86_64-linux-gnu/{name}").as_bytes(), data);
    }
    base.file(b"usr/lib/x86_64-linux-gnu/libunused.so.1", &unused);
    // The loader at its PT_INTERP path (below /lib, that is usr/lib here).
    let interp_rel = interp.trim_start_matches('/');
    let interp_at = match interp_rel.strip_prefix("lib/") {
        Some(rest) => format!("usr/lib/{rest}"),
        None => interp_rel.to_string(),
    };
    if let Some((d, _)) = interp_at.rsplit_once('/') {
        if !d.starts_with("usr/lib") {
            base.dir(d.as_bytes(), 0o755);
        }
    }
    base.file(interp_at.as_bytes(), &interp_data);
    let mut top = TarW::new();
    top.dir(b"usr", 0o755)
        .dir(b"usr/bin", 0o755)
        .dir(b"etc", 0o755);
    top.file(b"usr/bin/true", &program);
    top.file(b"etc/ld.so.cache", &ld_cache);
    let passwd = b"root:x:0:0:root:/root:/bin/sh\n".to_vec();
    top.file(b"etc/passwd", &passwd);
    let (locale, other_locale, zone) = (
        b"C.utf8 LC_CTYPE stand-in".to_vec(),
        b"de_DE LC_CTYPE stand-in".to_vec(),
        b"TZif stand-in".to_vec(),
    );
    top.dir(b"usr/lib", 0o755)
        .dir(b"usr/lib/locale", 0o755)
        .dir(b"usr/lib/locale/C.utf8", 0o755)
        .dir(b"usr/lib/locale/de_DE.utf8", 0o755)
        .dir(b"usr/share", 0o755)
        .dir(b"usr/share/zoneinfo", 0o755);
    top.file(b"usr/lib/locale/C.utf8/LC_CTYPE", &locale)
        .file(b"usr/lib/locale/de_DE.utf8/LC_CTYPE", &other_locale)
        .file(b"usr/share/zoneinfo/UTC", &zone);
    top.symlink(b"etc/localtime", b"/usr/share/zoneinfo/UTC");
    let reg = Arc::new(MemoryRegistry::new("memory.test"));
    let blobs = [
        LayerBlob::estargz(&base.finish()),
        LayerBlob::estargz(&top.finish()),
    ];
    let layers = [
        Digest::sha256_of(&blobs[0].bytes),
        Digest::sha256_of(&blobs[1].bytes),
    ];
    let run = serde_json::json!({
        "Cmd": ["true", "--ignored"],
        "Env": ["PATH=/usr/local/bin:/usr/bin", "LANG=C.UTF-8"]
    });
    let image = reg.add_image_running("lab/true", "esgz", &blobs, run.clone());
    TrueImage {
        reg,
        image,
        layers,
        program,
        interp,
        interp_data,
        libs,
        unused,
        ld_cache,
        passwd,
        locale,
        other_locale,
        zone,
        run,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_gets_the_program_its_loader_and_libraries_and_nothing_else() {
    let t = true_image();
    let (reg, image) = (t.reg.clone(), t.image.clone());
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let fs = fs_of(reg.clone(), store.clone());

    let warmed = fs.warm_entrypoint("lab/true", &image).await.unwrap();
    assert_eq!(
        warmed.paths.first().map(String::as_str),
        Some("/usr/bin/true")
    );
    assert!(warmed.paths.contains(&t.interp), "{:?}", warmed.paths);
    assert!(warmed.paths.iter().any(|p| p == "/etc/ld.so.cache"));
    assert!(cached(&store, &t.program) && cached(&store, &t.ld_cache));
    // The runtime's own read (no /etc/group in this image: skipped).
    assert!(cached(&store, &t.passwd), "{:?}", warmed.paths);
    for (name, data) in &t.libs {
        assert!(
            cached(&store, data),
            "{name} not warmed: {:?}",
            warmed.paths
        );
    }
    assert!(
        !cached(&store, &t.unused),
        "a library nobody needs was fetched"
    );
    // What the C library reads for LANG=C.UTF-8, and the time zone
    // through the /etc/localtime link; not another locale.
    assert!(
        cached(&store, &t.locale) && cached(&store, &t.zone),
        "{:?}",
        warmed.paths
    );
    assert!(
        !cached(&store, &t.other_locale),
        "another locale was fetched"
    );
    let libs_len: usize = t.libs.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(
        warmed.bytes as usize,
        t.program.len()
            + t.ld_cache.len()
            + t.interp_data.len()
            + libs_len
            + t.passwd.len()
            + t.locale.len()
            + t.zone.len()
    );

    // A gzip image: nothing fetched, no layer touched.
    let mut w = TarW::new();
    w.dir(b"usr", 0o755).dir(b"usr/bin", 0o755);
    w.file(b"usr/bin/true", &t.program);
    let gz = LayerBlob::gzip(&w.finish());
    let gz_blob = Digest::sha256_of(&gz.bytes);
    let gz_image = reg.add_image_running("lab/true", "gz", &[gz], t.run);
    let warmed = fs.warm_entrypoint("lab/true", &gz_image).await.unwrap();
    assert!(warmed.paths.is_empty());
    assert_eq!(reg.blob_requests(&gz_blob), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_prefetch_list_is_warmed_with_the_start_up_files() {
    let mut w = TarW::new();
    w.dir(b"usr", 0o755)
        .dir(b"usr/bin", 0o755)
        .dir(b"data", 0o755);
    w.file(b"usr/bin/app", b"#!/bin/sh\necho app\n");
    let (a, b, unlisted) = (
        b"listed a".to_vec(),
        b"listed b".to_vec(),
        b"never read".to_vec(),
    );
    w.file(b"data/a", &a)
        .file(b"data/b", &b)
        .file(b"data/unlisted", &unlisted);
    let reg = Arc::new(MemoryRegistry::new("memory.test"));
    let run = serde_json::json!({"Cmd": ["app"]});
    let image = reg.add_image_running("lab/app", "esgz", &[LayerBlob::estargz(&w.finish())], run);

    // Machine A publishes what a workload read (the fallback tag: the
    // memory registry has no referrers API).
    let dir_a = tempfile::tempdir().unwrap();
    let a_store = Arc::new(Store::open(dir_a.path(), 1 << 30).unwrap());
    let machine_a = Content::new(reg.clone(), a_store, 1_000_000, Limits::default());
    let paths = vec!["data/a".to_string(), "/data/b".to_string()];
    machine_a
        .publish_prefetch_list("lab/app", &image, &paths)
        .await
        .unwrap();

    // Machine B without published indexes: only the program.
    let dir_b = tempfile::tempdir().unwrap();
    let store_b = Arc::new(Store::open(dir_b.path(), 1 << 30).unwrap());
    let fs_b = fs_of(reg.clone(), store_b.clone());
    let warmed = fs_b.warm_entrypoint("lab/app", &image).await.unwrap();
    assert_eq!(warmed.paths, ["/usr/bin/app"]);
    assert!(!cached(&store_b, &a));

    // Machine C with them: the listed files too, nothing else.
    let dir_c = tempfile::tempdir().unwrap();
    let store_c = Arc::new(Store::open(dir_c.path(), 1 << 30).unwrap());
    let mut content = Content::new(reg.clone(), store_c.clone(), 1_000_000, Limits::default());
    content.set_use_published_indexes(true, Duration::from_secs(3600));
    let fs_c = Fs::new(
        content,
        FsConfig {
            platform: "linux/amd64".parse().unwrap(),
            tag_ttl: Duration::from_secs(60),
            mount_time: SystemTime::UNIX_EPOCH,
        },
    );
    let warmed = fs_c.warm_entrypoint("lab/app", &image).await.unwrap();
    assert_eq!(warmed.paths, ["/usr/bin/app", "/data/a", "/data/b"]);
    assert!(cached(&store_c, &a) && cached(&store_c, &b));
    assert!(!cached(&store_c, &unlisted), "an unlisted file was fetched");
}

/// The inode of `path` (components) from the mount's root.
async fn ino_of(fs: &Fs, path: &[&str]) -> u64 {
    let mut ino = crate::fs::ROOT_INO;
    for name in path {
        ino = fs.lookup(ino, name.as_bytes()).await.unwrap().ino;
    }
    ino
}

/// Wait (at most 10 s) until every one of `datas` is in `store`.
async fn until_cached(store: &Store, datas: &[&[u8]]) -> bool {
    for _ in 0..1000 {
        if datas.iter().all(|d| cached(store, d)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_open_of_a_layer_file_warms_its_loader_and_libraries() {
    let t = true_image();
    let image_dir = format!("true@{}", t.image);
    let layer_dir = format!("2-{}", t.layers[1]);
    let path = [
        "lab", &image_dir, "layers", &layer_dir, "usr", "bin", "true",
    ];

    // An ordinary open and read of the program (`cat`, `cp`): nothing else.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let fs = Arc::new(fs_of(t.reg.clone(), store.clone()));
    let ino = ino_of(&fs, &path).await;
    let fh = fs.open(ino).await.unwrap();
    let got = fs.read(fh, 0, t.program.len() as u32).await.unwrap();
    assert_eq!(got, t.program);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !cached(&store, &t.interp_data),
        "a plain open warmed the loader"
    );
    assert!(t.libs.iter().all(|(_, d)| !cached(&store, d)));

    // Opened for exec (through the layer's directory, as overlayfs does):
    // the loader, its cache and the libraries come in behind it, resolved
    // across layers; the unused library and the runtime's files do not.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let fs = Arc::new(fs_of(t.reg.clone(), store.clone()));
    let ino = ino_of(&fs, &path).await;
    fs.open_exec(ino).await.unwrap();
    let mut want: Vec<&[u8]> = vec![&t.program, &t.interp_data, &t.ld_cache];
    want.extend(t.libs.iter().map(|(_, d)| d.as_slice()));
    assert!(until_cached(&store, &want).await, "exec's files not warmed");
    assert!(
        !cached(&store, &t.unused),
        "a library nobody needs was fetched"
    );
    assert!(!cached(&store, &t.passwd), "not a runtime start: no passwd");
    // The time zone, and the locale the image's environment names
    // (LANG=C.UTF-8); not another locale.
    assert!(cached(&store, &t.zone) && cached(&store, &t.locale));
    assert!(
        !cached(&store, &t.other_locale),
        "another locale was fetched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_read_after_an_exec_open_fetches_the_whole_file_in_one_request() {
    // A program of two chunks (4 MiB and the rest) in an eStargz layer on
    // a gzip one: the image is not all lazy, so no warming runs beside the
    // reads and fetches the second chunk on its own.
    let program: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 251) as u8).collect();
    let chunk = crate::export::estargz::CHUNK_SIZE as usize;
    let (first, second) = program.split_at(chunk);
    let mut base = TarW::new();
    base.dir(b"etc", 0o755).file(b"etc/hostname", b"base\n");
    let mut w = TarW::new();
    w.dir(b"bin", 0o755).file(b"bin/app", &program);
    let layer = LayerBlob::estargz(&w.finish());
    let blob = Digest::sha256_of(&layer.bytes);
    let reg = Arc::new(MemoryRegistry::new("memory.test"));
    let layers = [LayerBlob::gzip(&base.finish()), layer];
    let image = reg.add_image_running("lab/app", "esgz", &layers, serde_json::json!({}));
    let image_dir = format!("app@{image}");
    let layer_dir = format!("2-{blob}");
    let path = ["lab", &image_dir, "layers", &layer_dir, "bin", "app"];

    // Opened plainly, a read of the first page fetches its chunk only.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let fs = Arc::new(fs_of(reg.clone(), store.clone()));
    let fh = fs.open(ino_of(&fs, &path).await).await.unwrap();
    assert_eq!(fs.read(fh, 0, 4096).await.unwrap(), &program[..4096]);
    assert!(cached(&store, first) && !cached(&store, second));

    // Opened for exec, the same read brings both chunks before it returns,
    // in one request; later reads are ordinary.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let fs = Arc::new(fs_of(reg.clone(), store.clone()));
    let ino = ino_of(&fs, &path).await;
    let before = reg.blob_requests(&blob);
    let fh = fs.open_exec(ino).await.unwrap();
    assert_eq!(fs.read(fh, 0, 4096).await.unwrap(), &program[..4096]);
    assert!(cached(&store, first) && cached(&store, second));
    let at = chunk as u64 + 10;
    assert_eq!(
        fs.read(fh, at, 100).await.unwrap(),
        &program[at as usize..][..100]
    );
    assert_eq!(reg.blob_requests(&blob) - before, 1, "one Range request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_after_the_runtime_warming_reads_nothing_again() {
    let t = true_image();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let fs = Arc::new(fs_of(t.reg.clone(), store.clone()));
    let warmed = fs.warm_entrypoint("lab/true", &t.image).await.unwrap();
    assert!(warmed.paths.contains(&t.interp), "{:?}", warmed.paths);
    // Take the warmed files out of the store: a warming that read them
    // again would fetch them again.
    let mut taken: Vec<&[u8]> = vec![&t.program, &t.interp_data, &t.ld_cache];
    taken.extend(t.libs.iter().map(|(_, d)| d.as_slice()));
    for d in &taken {
        let path = store.get(Section::Chunk, &Digest::sha256_of(d)).unwrap();
        std::fs::remove_file(path).unwrap();
    }
    let before = t.layers.clone().map(|l| t.reg.blob_requests(&l));
    // The runtime execs the program (through the image's merged tree).
    let rootfs = Arc::new(crate::fs::TreeId {
        repo: "lab/true".into(),
        image: t.image.clone(),
        which: crate::fs::TreeWhich::Rootfs,
    });
    let tree = fs.trees.load(&fs, &rootfs).await.unwrap();
    let node = tree.tree.lookup_path(b"usr/bin/true").unwrap();
    let again = fs.warm_exec(&rootfs, node).await.unwrap();
    // The same files, known from the first warming: none read, none fetched.
    assert!(again.paths.contains(&t.interp), "{:?}", again.paths);
    assert_eq!(t.layers.clone().map(|l| t.reg.blob_requests(&l)), before);
    assert!(taken.iter().all(|d| !cached(&store, d)));
}
