//! The control protocol: the requests and answers both ends of the control
//! socket use ([`crate::control`] serves them, [`crate::client`] sends them).
//!
//! Line-delimited JSON over a Unix socket, one request per connection: the
//! client writes one [`Request`] line; the daemon answers with any number of
//! [`Line::Progress`] lines and one [`Answer`] line.
//!
//! ```text
//! → {"op":"commit","entry":"myapp:1.0","compression":"gzip","docker":false,"source_date_epoch":null}
//! ← {"progress":{"entry":…,"phase":"push","packed":…,"content_total":…,"sent":…,"push_total":…}}   (repeated)
//! ← {"ok":true,"result":{"reference":…,"manifest":"sha256:…",…}}   or   {"ok":false,"error":"…"}
//! → {"op":"new","entry":"myapp:2.0","from":"lab/python:3.11"}
//! → {"op":"status"}   ← {"ok":true,"result":{"entries":[…],"in_flight":[…],"images":[…],"cache":{…},"fetches_in_flight":0,…}}
//! → {"op":"prefetch","reference":"lab/python:3.11"}
//! ← {"progress":{"layers_total":4,"layers_done":1,"bytes_total":…,"bytes_done":…}}   (repeated)
//! ← {"ok":true,"result":{"digest":"sha256:…","layers":4,"bytes":…,"lazy_layers":0,"ms":…}}
//! ```
//!
//! Answers are read leniently (`#[serde(default)]`): a client can talk to a
//! daemon that sends fewer fields, and adding a field is one line in its
//! struct here (plus where the daemon fills it in).

use std::path::PathBuf;

pub use regfs::export::commit::ProgressView as CommitProgress;
pub use regfs::export::{CommitOutcome, EntryMeta};
pub use regfs::fs::{ImageInUse, LayerInUse};
use serde::{Deserialize, Serialize};

/// A request: the one line a client sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Commit an entry. Answer: [`CommitOutcome`], progress [`CommitProgress`].
    Commit {
        /// The entry reference.
        entry: String,
        /// gzip, zstd, none (default: the mount's).
        #[serde(default)]
        compression: Option<String>,
        /// Docker schema 2 instead of OCI.
        #[serde(default)]
        docker: Option<bool>,
        /// Clamp mtimes and `created`.
        #[serde(default)]
        source_date_epoch: Option<i64>,
    },
    /// Make an entry, optionally from a base image. Answer: [`EntryMeta`].
    New {
        /// The entry reference.
        entry: String,
        /// The base.
        #[serde(default)]
        from: Option<String>,
    },
    /// Entries and commits in flight; images in use, cache, fetches in
    /// flight. Answer: [`Status`].
    Status,
    /// Warm the cache for an image of the mounted registry. Answer:
    /// [`PrefetchDone`], progress [`PrefetchProgress`].
    Prefetch {
        /// NAME:TAG or NAME@DIGEST.
        reference: String,
    },
    /// Start recording the files of an image opened through the mount.
    /// Answer: the image manifest's digest.
    TraceStart {
        /// NAME:TAG or NAME@DIGEST.
        reference: String,
    },
    /// Stop a trace. Answer: the paths opened, in order.
    TraceStop {
        /// NAME:TAG or NAME@DIGEST.
        reference: String,
    },
    /// Replace this server by a new one under its supervisor (`regfs
    /// restart`). Answer: the old server's pid.
    Restart,
    /// Publish the gzip layer indexes this cache holds for an image.
    /// Answer: [`IndexPushed`].
    IndexPush {
        /// NAME:TAG or NAME@DIGEST.
        reference: String,
    },
    /// Publish a prefetch list (`regfs trace stop --publish`) next to an
    /// image. Answer: the artifact's manifest digest.
    PrefetchListPush {
        /// NAME:TAG or NAME@DIGEST.
        reference: String,
        /// Paths relative to the image's root, in the order they were read.
        paths: Vec<String>,
    },
}

/// One line of a daemon's answer: progress, or the final answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line<P, R> {
    /// Progress so far (repeated, any number of times).
    Progress {
        /// The request's progress type.
        progress: P,
    },
    /// The last line.
    Answer(Answer<R>),
}

/// The last line of an answer: `{"ok":true,"result":…}` or
/// `{"ok":false,"error":"…"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer<R> {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result, when `ok` (a missing `Option` field reads as `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<R>,
    /// Why it failed, when not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl<R> Answer<R> {
    /// The answer for `r`.
    pub fn of<E: std::fmt::Display>(r: Result<R, E>) -> Answer<R> {
        match r {
            Ok(result) => Answer {
                ok: true,
                result: Some(result),
                error: None,
            },
            Err(e) => Answer::error(e.to_string()),
        }
    }

    /// A failure.
    pub fn error(error: String) -> Answer<R> {
        Answer {
            ok: false,
            result: None,
            error: Some(error),
        }
    }
}

/// Progress of a prefetch. Bytes are compressed (descriptor) sizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrefetchProgress {
    /// Layers of the image.
    pub layers_total: u64,
    /// Layers now in the cache.
    pub layers_done: u64,
    /// Config plus layer sizes.
    pub bytes_total: u64,
    /// Of which in the cache.
    pub bytes_done: u64,
}

/// What `index push` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IndexPushed {
    /// The image manifest's digest (the platform's, for an index).
    pub image: String,
    /// The index artifact's manifest digest.
    pub artifact: String,
    /// Gzip layers whose index it holds.
    pub layers: u64,
    /// Gzip layers left out: not indexed in this cache.
    pub missing: u64,
    /// The referrers tag updated (registries without the referrers API).
    pub fallback_tag: Option<String>,
    /// It was already published.
    pub already: bool,
    /// The chunk-list artifact's manifest digest, if large blobs had lists.
    #[serde(default)]
    pub chunk_artifact: Option<String>,
    /// Large blobs whose chunk list it holds.
    #[serde(default)]
    pub chunk_lists: u64,
}

/// What a prefetch did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrefetchDone {
    /// The image manifest's digest (the platform's, for an index).
    pub digest: String,
    /// Layers in the cache.
    pub layers: u64,
    /// Config plus layer sizes (compressed).
    pub bytes: u64,
    /// Layers served lazily, whose chunks were all fetched.
    pub lazy_layers: u64,
    /// Milliseconds it took.
    pub ms: u64,
}

/// A daemon's state: the export side's entries and commits, the read-only
/// side's images, cache and fetches.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// Export entries (empty without `--export`).
    pub entries: Vec<EntryMeta>,
    /// Commits in flight.
    pub in_flight: Vec<CommitProgress>,
    /// Whether the daemon serves an export directory.
    pub export: bool,
    /// The daemon's process id (the server's, under a supervisor).
    pub pid: u32,
    /// Under `--supervise`: which server this is (0: the first; one more
    /// for each restart or crash).
    pub generation: Option<u64>,
    /// Under `--supervise`: the supervisor's process id.
    pub supervisor_pid: Option<u32>,
    /// The mounted registry.
    pub registry: String,
    /// Whether the registry answers (absent from daemons before this field).
    pub registry_state: Option<RegistryState>,
    /// The read-only mountpoint.
    pub mountpoint: PathBuf,
    /// Images whose trees are in memory.
    pub images: Vec<ImageInUse>,
    /// Layers container runtimes use through the layer store (pinned in the cache).
    pub layers_in_use: Vec<LayerInUse>,
    /// The cache.
    pub cache: CacheStatus,
    /// Registry fetches in flight.
    pub fetches_in_flight: u64,
    /// HTTP requests sent to the registry.
    pub requests: u64,
    /// Body bytes received from the registry.
    pub bytes_received: u64,
}

/// Whether the mounted registry answers, as last checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryState {
    /// Whether the last check got an answer.
    pub reachable: bool,
    /// When `reachable` last changed (or the mount started), Unix seconds.
    pub since: u64,
    /// The last failure, kept after the registry comes back.
    pub last_error: Option<String>,
    /// When the last check ran, Unix seconds.
    pub last_check: u64,
    /// Checks made so far (the one at mount included).
    pub checks: u64,
}

/// The cache part of [`Status`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheStatus {
    /// The cache directory.
    pub dir: PathBuf,
    /// Bytes held.
    pub size: u64,
    /// The size limit.
    pub limit: u64,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups not answered from the cache.
    pub misses: u64,
    /// Entries evicted.
    pub evictions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_the_wire_format() {
        let r = Request::Commit {
            entry: "myapp:1.0".into(),
            compression: Some("gzip".into()),
            docker: None,
            source_date_epoch: None,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"commit","entry":"myapp:1.0","compression":"gzip","docker":null,"source_date_epoch":null}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"op":"status"}"#
        );
        let p: Request = serde_json::from_str(r#"{"op":"prefetch","reference":"a:b"}"#).unwrap();
        assert_eq!(
            p,
            Request::Prefetch {
                reference: "a:b".into()
            }
        );
        // Optional fields may be left out.
        let n: Request = serde_json::from_str(r#"{"op":"new","entry":"e:1"}"#).unwrap();
        assert_eq!(
            n,
            Request::New {
                entry: "e:1".into(),
                from: None
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
    }

    #[test]
    fn answer_lines_keep_the_wire_format() {
        type L = Line<PrefetchProgress, PrefetchDone>;
        let ok: L = Line::Answer(Answer::of(Ok::<_, String>(PrefetchDone {
            digest: "sha256:ab".into(),
            layers: 4,
            ..PrefetchDone::default()
        })));
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"ok":true,"result":{"digest":"sha256:ab","layers":4,"bytes":0,"lazy_layers":0,"ms":0}}"#
        );
        let err: L = Line::Answer(Answer::error("no such image".into()));
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"ok":false,"error":"no such image"}"#
        );
        let prog: L = Line::Progress {
            progress: PrefetchProgress {
                layers_total: 2,
                ..PrefetchProgress::default()
            },
        };
        let json = serde_json::to_string(&prog).unwrap();
        assert_eq!(
            json,
            r#"{"progress":{"layers_total":2,"layers_done":0,"bytes_total":0,"bytes_done":0}}"#
        );
        for l in [ok, err, prog] {
            let back: L = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
            assert_eq!(back, l);
        }
    }
}
