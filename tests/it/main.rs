//! Integration tests: the real `sregistry` binary against a temporary cache per test.
//! One test binary (see `Cargo.toml`), one module per area.

mod common;
#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod config;
mod contention;
mod convert;
mod crash;
mod credentials;
mod docker;
mod error_kinds;
mod forget_nothing;
mod gc;
mod images;
mod index_damage;
mod interop;
mod layers;
mod live_pull;
mod local;
mod messages;
mod migrate;
mod move_add;
mod names;
mod offline;
mod open_cache;
mod pins;
mod platform;
mod private;
mod registry;
mod remote;
mod remote_faults;
mod replaced;
mod reproducible;
mod s3;
mod shared;
mod shared_init;
mod spares;
mod tiers;
mod tls;
mod uses;
mod verify;
