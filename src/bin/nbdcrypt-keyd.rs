fn main() {
    std::process::exit(nbdcrypt::keyservice::keyd::main())
}
