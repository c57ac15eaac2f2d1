//! The `nbdcrypt` binary: [`nbdcrypt::cli::main`], its return value the exit code.

fn main() {
    std::process::exit(nbdcrypt::cli::main())
}
