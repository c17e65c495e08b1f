//! One file per subcommand; each turns parsed arguments into calls on [`Cache`] and
//! prints the result through [`output`]. Commands never touch redb or blob paths
//! directly.

pub mod add;
pub mod completions;
pub mod doctor;
pub mod gc;
pub mod get;
pub mod info;
pub mod init;
pub mod inspect;
pub mod list;
pub mod login;
pub mod output;
pub mod pin;
pub mod pull;
pub mod push;
pub mod rm;
pub mod search;
pub mod tag;
pub mod verify;

use anyhow::Result;

use crate::cache::Cache;
use crate::cli::{Cli, Command};
use crate::lock::LockOptions;
use crate::reference::Reference;

/// What every command gets: the cache and the global output switches.
pub struct Ctx {
    pub cache: Cache,
    pub json: bool,
    pub quiet: bool,
    pub lock: LockOptions,
}

impl Ctx {
    /// Print a message for people on stderr, unless `--quiet`.
    pub fn say(&self, msg: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }
}

/// Options for remotes from the command line: a progress bar only on a terminal and
/// without --quiet.
pub fn remote_options(
    ctx: &Ctx,
    insecure: bool,
    endpoint: Option<String>,
) -> crate::remote::RemoteOptions {
    use std::io::IsTerminal;
    crate::remote::RemoteOptions {
        insecure,
        endpoint,
        progress: !ctx.quiet && std::io::stderr().is_terminal(),
        labels: Default::default(),
    }
}

/// Parse a local reference given on the command line.
pub fn parse_ref(s: &str) -> Result<Reference> {
    Ok(Reference::parse(s)?)
}

/// Run one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    if let Command::Completions(args) = &cli.command {
        return completions::run(args);
    }
    let mut lock = LockOptions::from_env()?;
    lock.announce = !cli.quiet;
    if let Command::Init(args) = &cli.command {
        return init::run(args, cli.cache.as_deref(), &lock, cli.json, cli.quiet);
    }
    let root = Cache::resolve_root(cli.cache.as_deref())?;
    let ctx = Ctx {
        cache: Cache::open(&root, lock.clone())?,
        json: cli.json,
        quiet: cli.quiet,
        lock,
    };
    match &cli.command {
        Command::Add(a) => add::run(&ctx, a),
        Command::Get(a) => get::run(&ctx, a),
        Command::List(a) => list::run(&ctx, a),
        Command::Inspect(a) => inspect::run(&ctx, a),
        Command::Tag(a) => tag::run(&ctx, a),
        Command::Rm(a) => rm::run(&ctx, a),
        Command::Pin(a) => pin::run(&ctx, a, true),
        Command::Unpin(a) => pin::run(&ctx, a, false),
        Command::Info(a) => info::run(&ctx, a),
        Command::Pull(a) => pull::run(&ctx, a),
        Command::Push(a) => push::run(&ctx, a),
        Command::Search(a) => search::run(&ctx, a),
        Command::Login(a) => login::run(&ctx, a),
        Command::Logout(a) => login::logout(&ctx, a),
        Command::Gc(a) => gc::run(&ctx, a),
        Command::Verify(a) => verify::run(&ctx, a),
        Command::Doctor(a) => doctor::run(&ctx, a),
        Command::Completions(_) | Command::Init(_) => unreachable!("handled above"),
    }
}
