//! The `nbdcrypt-keyd` binary: [`nbdcrypt::keyd::main`], its return value the exit code.

fn main() {
    std::process::exit(nbdcrypt::keyd::main())
}
