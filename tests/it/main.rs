//! The integration tests of the `nbdcrypt` package, one test binary with one module per
//! concern (tests/README.md lists them, with the real peers each needs). One binary instead of
//! one per file: the package and its dependencies are linked once, not thirty times.
//!
//! Tests of different modules run in parallel threads of this one process, so none may change
//! process-wide state (the working directory, the environment, signal dispositions, the
//! allocator): child processes get their environment through `Command::env`. A test that needs
//! process-wide state of its own is a binary of its own (tests/README.md "Separate binaries").
//!
//! Run one module: `cargo test -p nbdcrypt --test it keyslots::`.

mod common;

mod bad_input;
mod benchmark_cmd;
mod crash_consistency;
mod cryptsetup_interop;
mod daemon;
mod data_compat;
mod detached_header;
mod discard;
mod docs;
mod dump_json;
mod faults;
mod header_ops;
mod keyservice;
mod keyservice_admin;
mod keyservice_audit;
mod keyservice_certs;
mod keyservice_conn;
mod keyservice_guide;
mod keyservice_hints;
mod keyservice_join;
mod keyservice_rewrap;
mod keyservice_volumes;
mod keyslots;
mod migration;
mod nbd_bounds;
mod nbd_clients;
mod nbd_exports;
mod nbd_kernel_session;
mod nbd_probe;
mod nbd_server;
mod nbd_tls;
mod secrets;
mod serve_clients;
mod serve_exports;
mod usage;
mod wipe;
