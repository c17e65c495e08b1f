//! Link the `sregistry` executable at a fixed address (not as a PIE).
//!
//! Every `get` is a fresh process, and a position-independent executable of this size
//! spends a fifth of a `get` in the dynamic loader applying about 18,000 relative
//! relocations (and faulting in the pages they touch): 1.6-1.9 ms against 1.4-1.5 ms
//! (docs/development.md). `.cargo/config.toml` goes further on Linux with glibc and links
//! statically with `relocation-model=static`, for which this flag is what the linker
//! expects anyway; it matters for a dynamic build (`RUSTFLAGS` set, or another libc).
//! Only the binaries get the flag; the library, tests and proc-macros are built as usual.
fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.contains("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
