//! Ecosystem: how regfs fits around registries and a host — one mount for
//! many registries (`any_registry`), credentials and
//! TLS (`auth_tls`, `credentials_token`), mirrors and client certificates
//! (`mirrors_tls`), configuration and mount(8) (`fstab_config`), the mount's
//! lifetime (`lifecycle`), logs, metrics and status (`observability`), an
//! unreachable registry (`reachability`), `scripts/install` (`install`), and
//! the v2 client on its own (`registry_client`).
//!
//! `HTTPS_PROXY` / `NO_PROXY` (`tests/proxy_env.rs`) is its own binary: it
//! sets the process environment the in-process client reads.

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

mod any_registry;
mod auth_tls;
mod credentials_token;
mod fstab_config;
mod install;
mod lifecycle;
mod mirrors_tls;
mod observability;
mod reachability;
mod registry_client;
