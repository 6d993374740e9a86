//! The `outsock-dns-cache` binary: a thin shell over the library.

fn main() {
    eprintln!("outsock-dns-cache: the server is not wired up yet");
    std::process::exit(1);
}
