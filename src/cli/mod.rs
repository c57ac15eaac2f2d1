//! The `nbdcrypt` command line (work in progress).

/// Entry point of the `nbdcrypt` binary; returns the process exit code.
pub fn main() -> i32 {
    0
}
