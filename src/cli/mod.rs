//! The command-line program's parts: argument parsing ([`args`]; the hot `get` and `add`
//! lines in [`quick`]), one file per subcommand ([`commands`]), the printer ([`output`]), the
//! progress bar ([`progress`]) and exit codes ([`exit`]). They
//! live in the binary, not the library: a program that embeds `sregistry` builds none of
//! them (no clap, no progress bars, nothing printed).

mod args;
pub mod commands;
pub mod exit;
pub mod output;
pub mod progress;
mod quick;

pub use args::*;
