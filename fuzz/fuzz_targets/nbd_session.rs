//! The NBD server session (fixed-newstyle handshake and transmission phase) driven through an
//! in-memory transport (`tokio::io::duplex`) with a 1 MiB in-memory export named `vol`, a
//! second read-only export `ro`, and a 64 KiB export `small` with a 4096-byte minimum block.
//!
//! Input: the bytes a client sends (a seed is a recorded session of nbdinfo, qemu-io, nbdcopy
//! or nbdsh). The server's output is read and discarded as it comes; after the last input byte
//! the client half-closes. Property: no panic, and the session ends (no hang).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "bodies/nbd_session.rs"]
mod body;

fuzz_target!(|data: &[u8]| {
    let _ = body::run(data);
});
