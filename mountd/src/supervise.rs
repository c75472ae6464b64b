//! `regfs mount … --supervise`: this process becomes the supervisor of the
//! mount (see `regfs::handover`). It starts the server (this binary again,
//! same arguments) and holds every FUSE connection the server mounts; when
//! the server dies it starts another, and `regfs restart` replaces it on
//! purpose (the binary at the same path, so an upgraded one). Readers see a
//! pause, not an error. The supervisor itself is small and is not replaced.

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use regfs::handover::holdings::Holdings;
use regfs::handover::{link, wire};

use crate::cli::MountArgs;

/// How long a restart waits for the old server's requests to be answered.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// How long a server is given to exit once its connections are taken.
const EXIT_LIMIT: Duration = Duration::from_secs(5);
/// A server that dies before it asked for its connections is failing to
/// start; [`CRASH_LIMIT`] such deaths within [`CRASH_WINDOW`] and the
/// supervisor gives up (the mounts end, so readers get an error rather
/// than wait). A server that served and died is always replaced.
const CRASH_LIMIT: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(30);

enum Event {
    Exited(u64, ExitStatus),
    Restart,
    Signal(Signal),
}

/// Run the supervisor until the mounts end.
pub fn run(args: &MountArgs, argv: Vec<OsString>) -> anyhow::Result<()> {
    crate::logging::init(args.log_file.as_deref())?;
    let exe = std::env::current_exe().context("locating the regfs binary")?;
    let password = if args.password_stdin {
        let mut l = String::new();
        std::io::stdin().lock().read_line(&mut l)?;
        Some(l.trim_end_matches('\n').to_string())
    } else {
        None
    };
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(crate::mount::default_cache_dir);
    let state_dir = cache_dir.join("run").join(std::process::id().to_string());
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("state directory {}", state_dir.display()))?;
    // Signals are taken by one thread; servers get the default mask back.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block()?;
    let (tx, rx) = mpsc::channel::<Event>();
    {
        let tx = tx.clone();
        std::thread::spawn(move || loop {
            match signals.wait() {
                Ok(s) => {
                    if tx.send(Event::Signal(s)).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        });
    }
    let ready = crate::readiness::ready_fd();
    let holdings = Arc::new(Holdings::default());
    let sup = Supervisor {
        exe,
        argv,
        state_dir: state_dir.clone(),
        password,
        holdings,
        tx,
    };
    let r = sup.run(rx, ready);
    let _ = std::fs::remove_dir_all(&state_dir);
    r
}

struct Supervisor {
    exe: PathBuf,
    argv: Vec<OsString>,
    state_dir: PathBuf,
    password: Option<String>,
    holdings: Arc<Holdings>,
    tx: mpsc::Sender<Event>,
}

impl Supervisor {
    fn run(&self, rx: mpsc::Receiver<Event>, mut ready: Option<OwnedFd>) -> anyhow::Result<()> {
        let mut generation = 0u64;
        let mut crashes: Vec<Instant> = Vec::new();
        let mut stopping = false;
        loop {
            let attached = Arc::new(AtomicBool::new(false));
            let child = self.spawn(generation, ready.take(), attached.clone())?;
            let exited = loop {
                match rx.recv().context("supervisor events")? {
                    Event::Exited(g, status) if g == generation => break Some(status),
                    Event::Exited(..) => {}
                    Event::Signal(s) => {
                        stopping = true;
                        tracing::info!(signal = ?s, "supervisor: stopping the server");
                        let _ = nix::sys::signal::kill(child, Signal::SIGTERM);
                    }
                    Event::Restart => {
                        let t0 = Instant::now();
                        let drained = self.holdings.drain(DRAIN_LIMIT);
                        let status = self.wait_exit(&rx, child, generation);
                        tracing::info!(
                            generation,
                            drained_ms = drained.as_millis() as u64,
                            stopped_ms = t0.elapsed().as_millis() as u64,
                            ?status,
                            "supervisor: old server gone, starting the new one"
                        );
                        break None;
                    }
                }
            };
            // Replaced on purpose: the next one takes over.
            let Some(exited) = exited else {
                generation += 1;
                continue;
            };
            let live = self.holdings.live();
            // A server that exits on its own has seen its mount go (or was
            // told to stop): what it left mounted goes too.
            if stopping || exited.success() || live.is_empty() {
                detach_all(&live);
                if exited.success() || stopping {
                    return Ok(());
                }
                // Its own error is on its standard error or in the log.
                anyhow::bail!("the server exited ({exited})");
            }
            self.holdings.lost_server();
            let now = Instant::now();
            crashes.retain(|t| now.duration_since(*t) < CRASH_WINDOW);
            if !attached.load(Ordering::SeqCst) {
                crashes.push(now);
            }
            tracing::error!(generation, status = %exited, pending = self.holdings.pending(), "supervisor: the server died; starting another");
            if crashes.len() >= CRASH_LIMIT {
                tracing::error!(
                    crashes = crashes.len(),
                    "supervisor: the server keeps dying; giving up and unmounting"
                );
                detach_all(&live);
                anyhow::bail!(
                    "the server died {} times in {:?}",
                    crashes.len(),
                    CRASH_WINDOW
                );
            }
            std::thread::sleep(Duration::from_millis(100) * crashes.len() as u32);
            generation += 1;
        }
    }

    /// Wait for the current server to exit after its connections were
    /// taken; kill it if it does not.
    fn wait_exit(
        &self,
        rx: &mpsc::Receiver<Event>,
        child: Pid,
        generation: u64,
    ) -> Option<ExitStatus> {
        let deadline = Instant::now() + EXIT_LIMIT;
        let mut killed = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(if killed { EXIT_LIMIT } else { left }) {
                Ok(Event::Exited(g, s)) if g == generation => return Some(s),
                Ok(Event::Signal(_)) | Ok(Event::Restart) | Ok(Event::Exited(..)) => {}
                Err(_) if !killed => {
                    tracing::warn!(
                        generation,
                        "supervisor: the old server did not exit; killing it"
                    );
                    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                    killed = true;
                }
                Err(_) => return None,
            }
        }
    }

    fn spawn(
        &self,
        generation: u64,
        ready: Option<OwnedFd>,
        attached: Arc<AtomicBool>,
    ) -> anyhow::Result<Pid> {
        let (ours, theirs) = wire::seqpacket_pair()?;
        wire::inheritable(&theirs)?;
        if generation == 0 {
            regfs::handover::write_state_version(&self.state_dir)?;
        }
        let mut cmd = Command::new(&self.exe);
        cmd.args(self.argv.iter().skip(1))
            .env(link::FD_ENV, theirs.as_raw_fd().to_string())
            .env(link::STATE_ENV, &self.state_dir)
            .env(link::GENERATION_ENV, generation.to_string())
            .stdin(if self.password.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        match &ready {
            Some(fd) => cmd.env(crate::readiness::READY_FD_ENV, fd.as_raw_fd().to_string()),
            None => cmd.env_remove(crate::readiness::READY_FD_ENV),
        };
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let _ = nix::sys::signal::sigprocmask(
                    SigmaskHow::SIG_SETMASK,
                    Some(&SigSet::empty()),
                    None,
                );
                Ok(())
            });
        }
        // A binary just written (an upgrade) may still be open for writing
        // in some process for a moment: ETXTBSY, worth a few retries.
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Ok(c) => break c,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(anyhow::Error::new(e).context("starting the server")),
            }
        };
        drop(theirs);
        drop(ready);
        if let (Some(pw), Some(mut stdin)) = (&self.password, child.stdin.take()) {
            let _ = writeln!(stdin, "{pw}");
        }
        tracing::info!(generation, pid = child.id(), "supervisor: server started");
        let holdings = self.holdings.clone();
        let (tx, state_dir, exe) = (self.tx.clone(), self.state_dir.clone(), self.exe.clone());
        std::thread::spawn(move || {
            let restart = || {
                preflight(&exe, &state_dir)?;
                tx.send(Event::Restart).map_err(|e| e.to_string())
            };
            let on_attach = || attached.store(true, Ordering::SeqCst);
            if let Err(e) = holdings.serve(&ours, &restart, &on_attach) {
                tracing::debug!(error = %e, "supervisor: server link ended");
            }
        });
        let (tx, pid) = (self.tx.clone(), Pid::from_raw(child.id() as i32));
        // The child is reaped here, not through `child` (dropped unwaited).
        std::thread::spawn(move || {
            let status = loop {
                match waitpid(pid, None) {
                    Ok(WaitStatus::Exited(_, code)) => break ExitStatus::from_raw(code << 8),
                    Ok(WaitStatus::Signaled(_, sig, _)) => break ExitStatus::from_raw(sig as i32),
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => break ExitStatus::from_raw(1 << 8),
                }
            };
            let _ = tx.send(Event::Exited(generation, status));
        });
        Ok(pid)
    }
}

/// Unmount what the supervisor still holds (the mounts end with it).
fn detach_all(conns: &[Arc<regfs::handover::relay::Connection>]) {
    for c in conns {
        let _ = crate::unmount::detach(Path::new(c.mountpoint()));
    }
}

/// Ask the binary that would be started whether it can take over the
/// state: an upgrade to an incompatible one is refused while the old
/// server keeps serving.
fn preflight(exe: &Path, state_dir: &Path) -> Result<(), String> {
    let out = Command::new(exe)
        .arg("state-check")
        .arg(state_dir)
        .output()
        .map_err(|e| format!("running {}: {e}", exe.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(format!(
        "{} cannot take over this mount: {}",
        exe.display(),
        if why.is_empty() {
            out.status.to_string()
        } else {
            why
        }
    ))
}

/// `regfs state-check DIR`: exit 0 if this binary can take over the state
/// in DIR, else say why.
pub fn state_check(dir: &Path) -> anyhow::Result<()> {
    regfs::handover::check_state(dir).map_err(anyhow::Error::msg)
}
