fn main() {
    std::process::exit(nbdcrypt::keyd::main())
}
