//! Helpers shared by the test modules of this binary.

/// The passphrase of every test volume.
pub const PASS: &[u8] = b"correct horse battery staple";

/// A fresh temporary directory, removed when the value is dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nbdcrypt-test-")
        .tempdir()
        .expect("tempdir")
}
