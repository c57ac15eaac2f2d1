fn main() {
    std::process::exit(nbdcrypt::cli::main())
}
