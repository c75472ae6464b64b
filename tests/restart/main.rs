//! Restart: a mount under `--supervise` keeps serving while its server is
//! replaced (`regfs restart`, an upgraded binary) or killed: readers in
//! loops see no error and no wrong byte (`readers`); an incompatible
//! binary is refused while the old server keeps serving (`upgrade`).

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

mod export;
mod readers;
mod registry_down;
mod upgrade;
