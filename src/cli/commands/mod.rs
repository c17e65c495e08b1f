//! One file per subcommand; each turns parsed arguments into calls on [`Cache`] and
//! prints the result through [`output`]. Commands never touch redb or blob paths
//! directly.

pub mod add;
pub mod completions;
pub mod config;
pub mod doctor;
pub mod export;
pub mod gc;
pub mod get;
pub mod info;
pub mod init;
pub mod inspect;
pub mod list;
pub mod login;
pub mod migrate;
pub use super::output;
pub mod pin;
pub mod pull;
pub mod push;
pub mod rm;
pub mod search;
pub mod tag;
pub mod tier;
pub mod verify;

use anyhow::Result;

use crate::cli::{Cli, Command};
use sregistry::cache::Cache;
use sregistry::cache::lock::LockOptions;
use sregistry::format::reference::Reference;
use sregistry::settings::{self, Config, Source, Value};

/// What every command gets: the cache, the configuration and the global output switches.
pub struct Ctx {
    pub cache: Cache,
    pub config: std::sync::Arc<Config>,
    pub json: bool,
    pub quiet: bool,
    pub lock: LockOptions,
    /// `--offline` or `SREGISTRY_OFFLINE`.
    pub offline: bool,
}

impl Ctx {
    /// The caches a lookup looks in: the caller's private cache (in a shared cache), the
    /// writable cache, then each tier (`sregistry::cache::tiers`). A configured tier that
    /// does not exist is warned of on stderr, once per command (even with --quiet): a job
    /// on a node whose mount is missing learns it.
    pub fn caches(&self) -> Result<sregistry::cache::Caches<'_>, sregistry::cache::CacheError> {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            for t in sregistry::cache::tiers::missing_tiers(&self.config.tiers) {
                eprintln!("warning: {}", sregistry::cache::tiers::MissingTier(t));
            }
        });
        sregistry::cache::Caches::new(&self.cache, &self.config.tiers)
    }

    /// Print a message for people on stderr, unless `--quiet`.
    pub fn say(&self, msg: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }
}

/// Options for remotes from the command line: a progress bar (and "waiting for ..."
/// messages) only on a terminal and without --quiet; the download limits of the
/// configuration (`max_download`, `min_free`).
pub fn remote_options(
    ctx: &Ctx,
    insecure: bool,
    endpoint: Option<String>,
) -> Result<sregistry::remote::RemoteOptions> {
    use std::io::IsTerminal;
    keep_heap_for_transfers();
    let limits = sregistry::cache::limits::Limits::from_config(&ctx.config);
    Ok(sregistry::remote::RemoteOptions {
        insecure,
        endpoint,
        progress: (!ctx.quiet && std::io::stderr().is_terminal()).then(|| {
            sregistry::remote::ProgressHook(std::sync::Arc::new(
                crate::cli::progress::Bar::default(),
            ))
        }),
        labels: Default::default(),
        repoint: Default::default(),
        limits,
        refetch: false,
        platform: None,
        squashfs_comp: None,
        offline: ctx.offline,
        shared_remotes: ctx.config.shared_remotes.clone(),
        anonymous: false,
        tiers: ctx.config.tiers.clone(),
        answer_from_tiers: false,
    })
}

/// Keep freed heap memory for reuse while a transfer runs (glibc). A download hands over
/// its data in buffers of a few hundred KiB, each freed once written and hashed; by
/// default glibc then gives the top of the heap back to the kernel, and the next buffer
/// faults fresh zeroed pages in. In a 1 GiB pull that was 47,000-84,000 page faults and
/// 10-25% more CPU time than with the heap kept (6,000-7,300 faults). The process keeps at most
/// its own peak heap until it exits. Set here, by the command-line program, not by the
/// library: a program embedding the library keeps its own allocator settings.
fn keep_heap_for_transfers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts glibc's malloc parameters; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Parse a local reference given on the command line. A remote reference given where a
/// cached image is meant (`inspect docker://...`) is a usage error that names the local
/// name `pull` gives it.
pub fn parse_ref(s: &str) -> Result<Reference> {
    Reference::parse(s).map_err(|e| match sregistry::remote::RemoteRef::parse(s) {
        Ok(remote) => {
            let named = remote
                .default_name(&sregistry::remote::RemoteOptions::default())
                .map(|n| format!(" (by default `{}`)", n.key()))
                .unwrap_or_default();
            // A query's values (a pre-signed URL's signature) are never shown.
            let shown = remote.to_string();
            let shown = match shown.split_once('?') {
                Some((before, _)) => format!("{before}?..."),
                None => shown,
            };
            crate::cli::exit::UsageError(format!(
                "`{shown}` is a remote reference, and this command takes the name of an image in the cache: `sregistry pull` it first, then give the name it has in the cache{named}; `sregistry get` takes a remote reference and pulls it"
            ))
            .into()
        }
        // A reference with a scheme that is not a valid remote one: its reason, which never
        // echoes a password or a query value, rather than the name grammar's message, which
        // would echo the input whole.
        Err(remote) if sregistry::remote::is_remote(s) => {
            crate::cli::exit::UsageError(format!(
                "{remote}; this command takes the name of an image in the cache"
            ))
            .into()
        }
        Err(_) => e.into(),
    })
}

/// Parse a name a command will point at content (`add --name`, `tag`'s DST, `pull
/// --name`): it cannot carry a digest (exit 2, before any work is done).
pub fn parse_target_ref(s: &str) -> Result<Reference> {
    let r = Reference::parse(s)?;
    sregistry::cache::refuse_digest_on_target(&r)?;
    Ok(r)
}

/// Run one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    if let Command::Completions(args) = &cli.command {
        return completions::run(args);
    }
    if let Command::Config(args) = &cli.command
        && let Some(file) = &args.check
    {
        return config::check(file, cli.global.json);
    }
    // The configuration is read once, here: a setting that is set to nonsense is refused
    // before anything is done, whichever setting this command would read.
    let mut config = settings::load()?;
    if let Some(dir) = &cli.global.cache {
        config.set(
            &settings::CACHE,
            Value::Path(dir.clone()),
            Source::Flag("--cache"),
        );
    }
    if cli.global.offline {
        let flag = Source::Flag("--offline");
        config.set(&settings::OFFLINE, Value::Bool(true), flag);
    }
    if !cli.global.tiers.is_empty() {
        let tiers = cli
            .global
            .tiers
            .iter()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
        let tiers = Value::Paths(tiers.collect());
        config.set(&settings::TIERS, tiers, Source::Flag("--tier"));
    }
    if let Command::Migrate(a) = &cli.command
        && let Some(dir) = &a.from
    {
        let flag = Source::Flag("migrate --from");
        config.set(&settings::DATABASE, Value::Path(dir.clone()), flag);
    }
    let config = settings::install(config);
    if let Command::Config(_) = &cli.command {
        return config::show(&config, cli.global.json);
    }
    let mut lock = LockOptions::from_config(&config);
    if !cli.global.quiet {
        lock.on_wait = Some(sregistry::cache::lock::OnWait(std::sync::Arc::new(
            |path| {
                // A per-pull lock (`v1/locks/`) is held by another download of the image.
                if path.parent().and_then(|d| d.file_name()) == Some("locks".as_ref()) {
                    eprintln!(
                        "waiting for another process that is downloading the same image (lock `{}`)",
                        path.display()
                    )
                } else {
                    eprintln!("waiting for lock on `{}`", path.display())
                }
            },
        )));
    }
    if let Command::Init(args) = &cli.command {
        return init::run(args, &config, &lock, cli.global.json, cli.global.quiet);
    }
    let root = Cache::resolve_root(None, &config)?;
    let ctx = Ctx {
        cache: Cache::open(&root, lock.clone())?,
        json: cli.global.json,
        quiet: cli.global.quiet,
        lock,
        offline: config.offline,
        config,
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
        Command::Export(a) => export::run(&ctx, a),
        Command::Search(a) => search::run(&ctx, a),
        Command::Login(a) => login::run(&ctx, a),
        Command::Logout(a) => login::logout(&ctx, a),
        Command::Gc(a) => gc::run(&ctx, a),
        Command::Verify(a) => verify::run(&ctx, a),
        Command::Doctor(a) => doctor::run(&ctx, a),
        Command::Migrate(a) => migrate::run(&ctx, a),
        Command::Tier(a) => tier::run(&ctx, a),
        Command::Completions(_) | Command::Init(_) | Command::Config(_) => {
            unreachable!("handled above")
        }
    }
}
