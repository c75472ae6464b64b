//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Mount an OCI / Docker v2 container registry as a read-only directory.
#[derive(Parser, Debug)]
#[command(
    name = "regfs",
    version,
    about,
    long_about = None,
    args_override_self = true,
    after_help = "\
Examples:
  regfs mount localhost:5000 /mnt/reg --daemon --metrics-addr 127.0.0.1:9100
  ls /mnt/reg/lab && cat /mnt/reg/lab/busybox:latest/config.json
  regfs prefetch /mnt/reg lab/python:3.11
  regfs status /mnt/reg
  regfs unmount /mnt/reg"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount REGISTRY at MOUNTPOINT (foreground unless --daemon).
    #[command(after_help = "\
Examples:
  regfs mount localhost:5000 /mnt/reg --daemon
  ls /mnt/reg/lab
  cat /mnt/reg/lab/busybox:latest/manifest.json
  regfs mount registry.example.com /mnt/reg --username me --password-stdin < token.txt
  regfs mount docker.io /mnt/hub --platform linux/arm64/v8
  regfs mount --any-registry /mnt/reg --daemon
  ls /mnt/reg/localhost:5000/lab/busybox:latest/rootfs
  regfs mount localhost:5000 /mnt/reg --layer-store /var/lib/regfs-layers --daemon   # for podman")]
    Mount(Box<MountArgs>),
    /// Replace a supervised mount's server with a new one (the binary at the
    /// same path, so an upgraded one too), without unmounting.
    #[command(after_help = "\
Examples:
  regfs mount localhost:5000 /mnt/reg --supervise --daemon
  regfs restart /mnt/reg        # readers see a pause, not an error")]
    Restart(RestartArgs),
    /// Check that this binary can take over a supervised server's state
    /// directory (run by the supervisor before a restart).
    #[command(hide = true)]
    StateCheck(StateCheckArgs),
    /// Unmount a regfs mount (lazy detach); its daemon exits 0.
    #[command(after_help = "\
Examples:
  regfs unmount /mnt/reg
  umount /mnt/reg          # the same, as root")]
    Unmount(UnmountArgs),
    /// Pack and push an export entry; exits 0 once the tag is pushed.
    #[command(after_help = "\
Examples:
  regfs mount localhost:5000 /mnt/reg --export /mnt/export --daemon
  mkdir /mnt/export/myapp:1.0 && cp -a rootfs/. /mnt/export/myapp:1.0/
  regfs commit /mnt/export/myapp:1.0
  echo 'commit myapp:1.0' > /mnt/export/.regfs-control   # the same, for tools that only write files")]
    Commit(CommitArgs),
    /// Manage export entries.
    #[command(
        subcommand,
        after_help = "\
Examples:
  regfs export new /mnt/export/myapp:2.0 --from lab/python:3.11
  regfs export new /mnt/export/scratch:1"
    )]
    Export(ExportCommand),
    /// Show what a daemon is doing: images in use, cache size and limit,
    /// fetches in flight, staged export entries and commits in flight.
    #[command(after_help = "\
Examples:
  regfs status /mnt/reg
  regfs status /mnt/reg --json | jq .cache
  regfs status /mnt/export          # the same daemon, through its export directory")]
    Status(StatusArgs),
    /// Warm the cache for an image (config and every layer, or every chunk of
    /// an eStargz / zstd:chunked layer) before it is used, with a progress bar.
    #[command(after_help = "\
Examples:
  regfs prefetch /mnt/reg lab/python:3.11
  regfs prefetch /mnt/reg lab/busybox@sha256:… --quiet
  # later, even with the registry unreachable:
  chroot /mnt/reg/lab/python@sha256:…/rootfs python3 -V")]
    Prefetch(PrefetchArgs),
    /// Export or import the index of a gzip layer (tar index + span index),
    /// so a machine that never streamed the layer can serve it by Range requests.
    #[command(
        subcommand,
        after_help = "\
Examples:
  regfs index export sha256:… layer.rgix --cache-dir /var/cache/regfs
  regfs index import layer.rgix --cache-dir /var/cache/regfs
  regfs index push /mnt/reg lab/python:3.11     # then, on other machines:
  regfs mount localhost:5000 /mnt/reg --use-published-indexes"
    )]
    Index(IndexCommand),
    /// Record which files of an image a workload reads through the mount,
    /// in the order it first opens them (a prefetch list).
    #[command(
        subcommand,
        after_help = "\
Examples:
  regfs trace start /mnt/reg lab/python:3.11
  chroot /mnt/reg/lab/python:3.11/rootfs python3 -c 'import json'
  regfs trace stop /mnt/reg lab/python:3.11 > python.trace"
    )]
    Trace(TraceCommand),
    /// List the paths added (A), deleted (D) and modified (M) between two
    /// images, from layer metadata and digests: eStargz / zstd:chunked
    /// layers by their TOCs alone, gzip layers streamed once into the cache.
    #[command(after_help = "\
Examples:
  regfs diff localhost:5000/lab/python:3.11 localhost:5000/lab/app:1.0
  regfs diff localhost:5000/lab/python:3.11-esgz lab/app:1.0-esgz --json   # second: the first's registry")]
    Diff(DiffArgs),
    /// Copy an image from registry to registry with its layers re-packed as
    /// eStargz or zstd:chunked (lazy at file granularity); every input is
    /// verified. With --prefetch-from, the files of a `regfs trace` come
    /// first in their layers, before a .prefetch.landmark.
    #[command(after_help = "\
Examples:
  regfs convert localhost:5000/lab/python:3.11 localhost:5000/lab/python:3.11-esgz --estargz
  regfs trace start /mnt/reg lab/python:3.11-esgz
  chroot /mnt/reg/lab/python:3.11-esgz/rootfs python3 -c 'import json'
  regfs trace stop /mnt/reg lab/python:3.11-esgz > python.trace
  regfs convert localhost:5000/lab/python:3.11 localhost:5000/lab/python:3.11-zc --zstd-chunked --prefetch-from python.trace")]
    Convert(ConvertArgs),
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  regfs completions bash > /etc/bash_completion.d/regfs
  regfs completions zsh > \"${fpath[1]}/_regfs\"
  regfs completions fish > ~/.config/fish/completions/regfs.fish")]
    Completions(CompletionsArgs),
    /// Print the man page (roff), generated from this command line.
    #[command(after_help = "\
Examples:
  regfs manpage > /usr/local/share/man/man1/regfs.1
  regfs manpage | man -l -")]
    Manpage,
}

#[derive(Args, Debug)]
pub struct PrefetchArgs {
    /// A regfs mountpoint (or its export directory).
    pub mountpoint: PathBuf,
    /// The image: NAME:TAG or NAME@DIGEST (a multi-arch tag means this mount's platform).
    pub reference: String,
    /// The daemon's control socket (found from the mountpoint otherwise).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `regfs trace start|stop`.
#[derive(Subcommand, Debug)]
pub enum TraceCommand {
    /// Start recording (again from nothing if a trace of the image runs).
    Start(TraceArgs),
    /// Stop recording and print the paths opened, one per line, in order.
    Stop(TraceStopArgs),
}

/// `regfs trace stop`.
#[derive(Args, Debug)]
pub struct TraceStopArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Also publish the list next to the image (an OCI artifact referring
    /// to it), for mounts with --use-published-indexes to warm those files
    /// when a runtime prepares the image.
    #[arg(long)]
    pub publish: bool,
}

/// The image a trace is of, and the mount it runs on.
#[derive(Args, Debug)]
pub struct TraceArgs {
    /// A regfs mountpoint.
    pub mountpoint: PathBuf,
    /// The image: NAME:TAG or NAME@DIGEST (a multi-arch tag means this mount's platform).
    pub reference: String,
    /// The daemon's control socket (found from the mountpoint otherwise).
    #[arg(long)]
    pub control: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum IndexCommand {
    /// Write the tar index and span index of a cached gzip layer (by diff_id
    /// or blob digest) to FILE, with the blob digest and diff_id; or the
    /// chunk list of a large blob read whole here (by blob digest).
    Export(IndexExportArgs),
    /// Check an exported index file or chunk list and store it in the cache.
    /// Trusted for where bytes are; every span or chunk is still verified
    /// against its digest.
    Import(IndexImportArgs),
    /// Publish the indexes of an image's gzip layers that a mount's cache
    /// holds, as an artifact referring to the image, for mounts with
    /// --use-published-indexes elsewhere.
    Push(IndexPushArgs),
}

#[derive(Args, Debug)]
pub struct IndexPushArgs {
    /// A regfs mountpoint whose cache streamed the image once.
    pub mountpoint: PathBuf,
    /// The image: NAME:TAG or NAME@DIGEST.
    pub reference: String,
    /// The daemon's control socket (found from the mountpoint otherwise).
    #[arg(long)]
    pub control: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct IndexExportArgs {
    /// The layer's diff_id or blob digest, or a large blob's digest (sha256:…).
    pub digest: String,
    /// Where to write the index ("-": standard output).
    pub file: PathBuf,
    /// The cache directory [default: as `regfs mount`].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct IndexImportArgs {
    /// An index file or chunk list written by `regfs index export` ("-": standard input).
    pub file: PathBuf,
    /// The cache directory [default: as `regfs mount`].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The first image: HOST[:PORT]/NAME:TAG or HOST[:PORT]/NAME@DIGEST.
    pub from: String,
    /// The second image (without a registry: the first's).
    pub to: String,
    /// Print JSON: the changes, with what differs for each modified path.
    #[arg(long)]
    pub json: bool,
    /// Where verified layers and TOCs are kept [default: beside a mount's cache, regfs-diff].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Bound on that cache's size on disk (K, M, G, T suffixes).
    #[arg(long, default_value = "10G", value_parser = crate::size::parse_size)]
    pub cache_size: u64,
    /// The platform a multi-arch tag resolves to [default: this host's].
    #[arg(long)]
    pub platform: Option<String>,
    /// Talk plain HTTP (loopback registries use it without asking).
    #[arg(long)]
    pub plain_http: bool,
    /// Trust this PEM CA certificate (repeatable).
    #[arg(long)]
    pub ca_cert: Vec<PathBuf>,
    /// Serve gzip layers from indexes published next to the images
    /// (`regfs index push`) instead of streaming them.
    #[arg(long)]
    pub use_published_indexes: bool,
    /// Seconds a request may go without progress, retries included.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// `regfs convert`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("format").required(true).args(["estargz", "zstd_chunked"])))]
pub struct ConvertArgs {
    /// The image: HOST[:PORT]/NAME:TAG or HOST[:PORT]/NAME@DIGEST (an index converts every image in it).
    pub source: String,
    /// Where to push it: HOST[:PORT]/NAME:TAG (another registry is fine).
    pub destination: String,
    /// Layers as eStargz (gzip members per file chunk, a TOC, a footer).
    #[arg(long)]
    pub estargz: bool,
    /// Layers as zstd:chunked (zstd frames per file chunk, the TOC in a skippable frame).
    #[arg(long)]
    pub zstd_chunked: bool,
    /// A trace (`regfs trace stop` output): these files go first in their
    /// layers, before a .prefetch.landmark, so mounts prefetch them.
    #[arg(long, value_name = "TRACE")]
    pub prefetch_from: Option<PathBuf>,
    /// Where layers are spooled when a trace reorders them [default: the temp dir].
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,
    /// Talk plain HTTP (loopback registries use it without asking).
    #[arg(long)]
    pub plain_http: bool,
    /// Trust this PEM CA certificate (repeatable).
    #[arg(long)]
    pub ca_cert: Vec<PathBuf>,
    /// Seconds a request may go without progress, retries included.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// No line per layer.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Subcommand, Debug)]
pub enum ExportCommand {
    /// Make an entry, empty or starting from an image of the mounted registry.
    #[command(after_help = "\
Example:
  regfs export new /mnt/export/myapp:2.0 --from lab/python:3.11")]
    New(ExportNewArgs),
}

#[derive(Args, Debug)]
pub struct CommitArgs {
    /// The entry: EXPORTDIR/NAME:TAG.
    pub path: PathBuf,
    /// Layer compression: gzip, zstd, estargz or none [default: the daemon's --compression].
    #[arg(long)]
    pub compression: Option<String>,
    /// Push a Docker schema 2 manifest instead of OCI.
    #[arg(long)]
    pub docker: bool,
    /// Clamp mtimes to this and use it as the image's `created` (seconds since the epoch).
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    pub source_date_epoch: Option<i64>,
    /// The daemon's control socket (found from the export directory otherwise).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct ExportNewArgs {
    /// The new entry: EXPORTDIR/NAME:TAG.
    pub path: PathBuf,
    /// Start from this image of the mounted registry (NAME:TAG or NAME@DIGEST).
    #[arg(long)]
    pub from: Option<String>,
    /// The daemon's control socket (found from the export directory otherwise).
    #[arg(long)]
    pub control: Option<PathBuf>,
}

/// `regfs restart`.
#[derive(Args, Debug)]
pub struct RestartArgs {
    /// The mountpoint (or layer store directory) of a mount started with --supervise.
    pub path: Option<PathBuf>,
    /// The daemon's control socket.
    #[arg(long)]
    pub control: Option<PathBuf>,
}

/// `regfs state-check`.
#[derive(Args, Debug)]
pub struct StateCheckArgs {
    /// A supervisor's state directory.
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// A regfs mountpoint or export directory.
    pub path: Option<PathBuf>,
    /// The daemon's control socket.
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// The registry as you would write it: localhost:5000, registry.example.com, docker.io
    /// (with --any-registry, give only MOUNTPOINT, or `any MOUNTPOINT` as fstab does).
    pub registry: String,
    /// An existing empty directory.
    pub mountpoint: Option<PathBuf>,
    /// Serve every registry: MOUNTPOINT/HOST[:PORT]/NAME:TAG, each registry opened
    /// when a path first names it (credentials, hosts.toml mirrors and TLS as for one).
    #[arg(long, conflicts_with_all = ["username", "mirror", "export"])]
    pub any_registry: bool,
    /// Where verified content is kept [default: $XDG_CACHE_HOME/regfs, or /var/cache/regfs as root].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Bound on the cache's size on disk (K, M, G, T suffixes).
    #[arg(long, default_value = "10G", value_parser = crate::size::parse_size)]
    pub cache_size: u64,
    /// The platform a multi-arch tag resolves to (os/arch[/variant]) [default: this host's].
    #[arg(long)]
    pub platform: Option<String>,
    /// Seconds a tag's resolution and directory listings are trusted before asking again.
    #[arg(long, default_value_t = 5)]
    pub tag_ttl: u64,
    /// Talk plain HTTP (loopback registries use it without asking).
    #[arg(long)]
    pub plain_http: bool,
    /// Trust this PEM CA certificate (repeatable).
    #[arg(long)]
    pub ca_cert: Vec<PathBuf>,
    /// Do not verify the registry's TLS certificate. Only for testing.
    #[arg(long)]
    pub insecure_skip_verify: bool,
    /// Read flags from this TOML file (keys as the flags: cache_size = "10G") instead of
    /// /etc/regfs/config.toml and ~/.config/regfs/config.toml. Command-line flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// mount(8)-style options: -o ro,allow_other,cache_size=10G,tag_ttl=5 (a flag per key;
    /// ro, rw, defaults, _netdev, nofail, x-* and the like are accepted and ignored).
    #[arg(short = 'o', value_name = "OPTS")]
    pub options: Vec<String>,
    /// Present this PEM client certificate to the registry (with --client-key).
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// A mirror (http(s)://host[:port]) tried before the registry, which stays the fallback (repeatable, in order).
    #[arg(long)]
    pub mirror: Vec<String>,
    /// containerd-style mirror configuration: DIR/<registry>/hosts.toml (else DIR/_default/hosts.toml).
    #[arg(long)]
    pub hosts_dir: Option<PathBuf>,
    /// User name for the registry (with --password-stdin); otherwise ~/.docker/config.json is used.
    #[arg(long, requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the password (or token) from the first line of standard input.
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Seconds a request may go without progress, retries included; then EIO.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Retries of a failed request (connection errors, 5xx, 429), within --timeout.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Let other users use the mount (allow_other).
    #[arg(long)]
    pub allow_other: bool,
    /// Detach once the mount is ready.
    #[arg(long)]
    pub daemon: bool,
    /// Serve under a small supervisor process that holds the FUSE
    /// connections: if the server dies it starts another, and `regfs
    /// restart` replaces it (an upgraded binary too); readers and containers
    /// see a pause, not an error.
    #[arg(long)]
    pub supervise: bool,
    /// Write the log here instead of standard error (RUST_LOG sets the level).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// FUSE dispatch threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Fetch the rest of each eStargz / zstd:chunked layer in the background
    /// once its TOC is loaded (throttled; foreground reads go first).
    #[arg(long)]
    pub background_fetch: bool,
    /// Bandwidth cap of background fetches and prefetches, and of the
    /// background checks of published indexes and chunk lists (one shared
    /// budget), bytes per second (0: none).
    #[arg(long, default_value = "32M", value_parser = crate::size::parse_size)]
    pub background_bandwidth: u64,
    /// Look for layer indexes and chunk lists published next to an image or
    /// artifact (`regfs index push`) and serve its plain gzip layers by spans,
    /// its large blobs by chunks, from the first read; each is checked against
    /// its layer or blob in the background afterwards.
    #[arg(long)]
    pub use_published_indexes: bool,
    /// Publish the layer indexes of every gzip image whose rootfs this mount
    /// streams (as `regfs index push` does), for other machines'
    /// --use-published-indexes.
    #[arg(long)]
    pub publish_indexes: bool,
    /// Seconds between adopting a published index (or chunk list) and
    /// checking it against its layer (or blob): the check streams it whole once.
    #[arg(long, default_value_t = 10, requires = "use_published_indexes")]
    pub published_index_check_delay: u64,
    /// Also serve the layers as a containers/storage additional layer store
    /// here, for podman: storage.conf `additionallayerstores = ["DIR:ref"]`.
    #[arg(long, value_name = "DIR")]
    pub layer_store: Option<PathBuf>,
    /// Also serve a writable export directory here (see `regfs commit --help`).
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Where export entries are staged [default: CACHE_DIR/export].
    #[arg(long, requires = "export")]
    pub export_state: Option<PathBuf>,
    /// Layer compression of commits: gzip, zstd, estargz or none.
    #[arg(long, default_value = "gzip")]
    pub compression: String,
    /// Commits push Docker schema 2 manifests instead of OCI.
    #[arg(long)]
    pub docker_manifest: bool,
    /// Commits clamp mtimes to this and use it as `created`.
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    pub source_date_epoch: Option<i64>,
    /// Also serve containerd's snapshots API on this unix socket: a remote
    /// snapshotter whose layers are this mount's (README: "containerd").
    #[arg(long, value_name = "SOCKET")]
    pub snapshotter: Option<PathBuf>,
    /// Snapshot metadata and local trees [default: CACHE_DIR/snapshotter].
    #[arg(long, value_name = "DIR", requires = "snapshotter")]
    pub snapshotter_root: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct UnmountArgs {
    /// The mountpoint.
    pub mountpoint: PathBuf,
}
