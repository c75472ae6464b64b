//! Readers in loops while the server is restarted 20 times and then
//! killed with SIGKILL at seeded random moments: file contents (page cache
//! dropped before each read, so every read reaches the server), forced
//! attribute reads and lookups of absent names, a file held open across
//! every switch, and `python3` in a `chroot` importing modules. Nothing may
//! fail and no byte may differ from `umoci unpack`; the longest pause a
//! reader saw is printed.

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::harness::*;

/// What the readers saw.
#[derive(Default)]
struct Tally {
    ops: AtomicU64,
    /// Longest operation of each kind, microseconds.
    longest_us: Mutex<std::collections::BTreeMap<String, u64>>,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn timed<T>(&self, what: &str, f: impl FnOnce() -> Result<T, String>) -> Option<T> {
        let t0 = Instant::now();
        let r = f();
        let us = t0.elapsed().as_micros() as u64;
        let mut l = self.longest_us.lock().unwrap();
        let e = l.entry(what.to_string()).or_default();
        *e = (*e).max(us);
        drop(l);
        self.ops.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.failures.lock().unwrap().push(format!("{what}: {e}"));
                None
            }
        }
    }
}

fn drop_page_cache(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor; advice only.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

fn sha(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

/// `statx(AT_STATX_FORCE_SYNC)`: the kernel asks the server, cache or not.
fn statx_sync(p: &Path) -> Result<u64, String> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_FORCE_SYNC,
            libc::STATX_BASIC_STATS,
            &mut st,
        )
    };
    if r != 0 {
        return Err(format!(
            "statx {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(st.stx_size)
}

fn server_pid(mnt: &Path) -> Option<u32> {
    let out = Command::new(regfs_bin())
        .args(["status", "--json"])
        .arg(mnt)
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["pid"].as_u64().map(|p| p as u32)
}

fn wait_new_server(mnt: &Path, old: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(p) = server_pid(mnt) {
            if p != old {
                return p;
            }
        }
        assert!(Instant::now() < deadline, "no new server after {old}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The python image's regular files under `usr/lib/python3.11` (up to
/// `n`), relative to the rootfs.
fn some_files(oracle: &Path, n: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![oracle.join("usr/lib/python3.11")];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() && out.len() < n {
                out.push(e.path().strip_prefix(oracle).unwrap().to_path_buf());
            }
        }
    }
    out
}

#[test]
fn readers_see_no_error_across_restarts_and_kills() {
    require_fuse!();
    let reg = lab().image("python:3.11");
    let oracle = umoci_unpack("python-3.11");
    let m = Mount::new(reg, &["--supervise"]);
    let mnt = m.path().to_path_buf();
    let rootfs = mnt.join("lab/python:3.11/rootfs");
    let files = some_files(&oracle, 400);
    assert!(files.len() >= 200, "{} files", files.len());
    let expected: Arc<Vec<(PathBuf, Vec<u8>)>> = Arc::new(
        files
            .iter()
            .map(|f| (f.clone(), sha(&std::fs::read(oracle.join(f)).unwrap())))
            .collect(),
    );
    let held_rel = Path::new("usr/bin/python3.11");
    let held_bytes = Arc::new(std::fs::read(oracle.join(held_rel)).unwrap());
    let held = File::open(rootfs.join(held_rel)).expect("open the held file");
    let held_ino = held.metadata().unwrap().ino();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut readers = Vec::new();
    // File contents, each read reaching the server.
    {
        let (stop, tally, expected, rootfs) = (
            stop.clone(),
            tally.clone(),
            expected.clone(),
            rootfs.clone(),
        );
        readers.push(std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (rel, want) in expected.iter() {
                    let p = rootfs.join(rel);
                    tally.timed("cat", || {
                        let mut f = File::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                        drop_page_cache(&f);
                        let mut b = Vec::new();
                        f.read_to_end(&mut b)
                            .map_err(|e| format!("{}: {e}", p.display()))?;
                        if &sha(&b) != want {
                            return Err(format!("{}: wrong bytes", p.display()));
                        }
                        Ok(())
                    });
                }
                rounds += 1;
            }
            rounds
        }));
    }
    // Attributes from the server and lookups of absent names.
    {
        let (stop, tally, expected, rootfs) = (
            stop.clone(),
            tally.clone(),
            expected.clone(),
            rootfs.clone(),
        );
        readers.push(std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (rel, _) in expected.iter().step_by(7) {
                    tally.timed("statx", || statx_sync(&rootfs.join(rel)).map(|_| ()));
                }
                let absent = rootfs.join(format!("usr/lib/absent-{rounds}"));
                tally.timed("lookup", || match std::fs::symlink_metadata(&absent) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    other => Err(format!("{}: {other:?}", absent.display())),
                });
                tally.timed("ls", || {
                    std::fs::read_dir(rootfs.join("usr/lib/python3.11"))
                        .and_then(|d| d.collect::<Result<Vec<_>, _>>())
                        .map(|v| assert!(v.len() > 100))
                        .map_err(|e| e.to_string())
                });
                rounds += 1;
            }
            rounds
        }));
    }
    // A file held open across every switch.
    {
        let (stop, tally, held_bytes) = (stop.clone(), tally.clone(), held_bytes.clone());
        readers.push(std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let len = held_bytes.len() as u64;
                let off = rng.random_range(0..len);
                let mut buf = vec![0u8; 65536.min((len - off) as usize)];
                tally.timed("held", || {
                    drop_page_cache(&held);
                    held.read_exact_at(&mut buf, off)
                        .map_err(|e| e.to_string())?;
                    if buf[..] != held_bytes[off as usize..off as usize + buf.len()] {
                        return Err(format!("held file: wrong bytes at {off}"));
                    }
                    Ok(())
                });
                rounds += 1;
            }
            rounds
        }));
    }
    // python3 in a chroot, importing modules.
    {
        let (stop, tally, rootfs) = (stop.clone(), tally.clone(), rootfs.clone());
        readers.push(std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tally.timed("python3", || {
                    let out = Command::new("chroot")
                        .arg(&rootfs)
                        .args([
                            "python3",
                            "-c",
                            "import json, sqlite3, email.mime.text, asyncio, decimal; print(1)",
                        ])
                        .env(
                            "PATH",
                            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        )
                        .output()
                        .map_err(|e| e.to_string())?;
                    if out.stdout != b"1\n" {
                        return Err(format!("{out:?}"));
                    }
                    Ok(())
                });
                rounds += 1;
            }
            rounds
        }));
    }

    std::thread::sleep(Duration::from_millis(300));
    let mut pid = server_pid(&mnt).expect("the server's pid");
    let supervisor = m.pid();
    let mut worst_restart = Duration::ZERO;
    for _ in 0..20 {
        let t0 = Instant::now();
        let out = Command::new(regfs_bin())
            .arg("restart")
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(out.status.success(), "regfs restart: {out:?}\n{}", m.log());
        worst_restart = worst_restart.max(t0.elapsed());
        pid = wait_new_server(&mnt, pid);
        std::thread::sleep(Duration::from_millis(150));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
        // SAFETY: a plain kill(2).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        pid = wait_new_server(&mnt, pid);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let rounds: Vec<u64> = readers.into_iter().map(|r| r.join().unwrap()).collect();

    let failures = tally.failures.lock().unwrap().clone();
    let longest = tally.longest_us.lock().unwrap().clone();
    // The pause: the longest single file-system call (a python3 run is a
    // whole process, shown beside it).
    let pause = longest
        .iter()
        .filter(|(k, _)| *k != "python3")
        .map(|(_, &us)| Duration::from_micros(us))
        .max()
        .unwrap_or_default();
    println!(
        "restart: {} reader operations ({rounds:?} rounds of cat, stat+lookup+ls, held-file reads, python3); longest pause {pause:?}; longest by kind (µs) {longest:?}; slowest `regfs restart` {worst_restart:?}",
        tally.ops.load(Ordering::Relaxed)
    );
    assert!(
        failures.is_empty(),
        "{} failures: {:#?}\n{}",
        failures.len(),
        &failures[..failures.len().min(20)],
        m.log()
    );
    assert!(
        rounds.iter().all(|&r| r >= 2),
        "every reader went round: {rounds:?}"
    );
    assert_eq!(m.pid(), supervisor, "the supervisor stayed");
    assert!(m.is_mounted());
    assert_eq!(
        std::fs::metadata(rootfs.join(held_rel)).unwrap().ino(),
        held_ino,
        "the held file's inode number is the same"
    );
    let log = m.log();
    assert_eq!(log.matches("server started").count(), 31, "{log}");
    // fuser's own complaints (a short read, a reply it could not send):
    // the log is coloured, so level and target are looked for per line.
    let fuser_errors: Vec<&str> = log
        .lines()
        .filter(|l| (l.contains("ERROR") || l.contains("WARN")) && l.contains("fuser::"))
        .collect();
    assert!(fuser_errors.is_empty(), "{fuser_errors:#?}");
}
