//! Command-line interface: the arguments of every subcommand, and their help text.
//!
//! Short help comes from `help = "..."`/the first doc line, long help (`--help`) from the
//! rest of the doc comment. Kept in the library so completions and docs are generated
//! from the same definitions the binary parses. The binary parses with
//! [`Cli::parse_args`], which builds only the invoked subcommand's arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// A content-addressed container-image cache that a whole cluster can share.
///
/// Images are stored once under their BLAKE3 digest, read-only; names such as
/// `lab/tool:1.2` point at them. `sregistry get NAME` prints the cached path, so batch
/// jobs can run `singularity run $(sregistry get lab/tool:1.2)`.
///
/// Exit codes: 0 ok, 1 error, 2 usage (bad arguments or a malformed name), 3 not found,
/// 4 a check found a problem (verify, doctor, a row migrate did not import). Exit 3 also
/// when NAME@blake3:<hex> names a digest the name does not point to.
#[derive(Debug, Parser)]
#[command(
    name = "sregistry",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// The options every subcommand takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Cache directory [default: $SREGISTRY_CACHE, else `cache` in a configuration file (see
    /// `sregistry config`), else ${XDG_CACHE_HOME:-~/.cache}/sregistry]
    #[arg(long, global = true, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Print machine-readable JSON on stdout instead of text
    #[arg(long, global = true)]
    pub json: bool,

    /// Print nothing on stderr but errors
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Contact no remote: `get` and `pull` answer from the cache; push, search and login
    /// are refused [env: SREGISTRY_OFFLINE=1; `offline = true` in a configuration file]
    #[arg(long, global = true)]
    pub offline: bool,

    /// A read-only cache to look in after the writable one (and the caller's private
    /// cache in it); repeat for more, looked in in order (replaces the configured list; a
    /// relative DIR is taken from the working directory) [env: SREGISTRY_TIERS,
    /// colon-separated, absolute;
    /// `tiers = [...]` in a configuration file]
    #[arg(long = "tier", global = true, value_name = "DIR")]
    pub tiers: Vec<PathBuf>,
}

impl Cli {
    /// Parse the process's arguments.
    ///
    /// The plain forms of `get` and `add` are read without clap ([`super::quick`]).
    /// Building clap's description of all 19 subcommands cost a `get` about a quarter of
    /// its time, so other arguments are first parsed against a command whose subcommands
    /// are only named, each built when it is the one invoked ([`lean_command`]). Help,
    /// `--version` and every error take the full parse instead, so what the user reads is
    /// exactly what the full definition says.
    pub fn parse_args() -> Result<Cli, clap::Error> {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        Self::parse_from_args(args)
    }

    /// [`Cli::parse_args`] of the given arguments (the first is the program name).
    pub fn parse_from_args(args: Vec<std::ffi::OsString>) -> Result<Cli, clap::Error> {
        use clap::FromArgMatches;
        if let Some(cli) = super::quick::parse(&args) {
            return Ok(cli);
        }
        if let Ok(m) = lean_command().try_get_matches_from(&args)
            && let Ok(cli) = Cli::from_arg_matches(&m)
        {
            return Ok(cli);
        }
        Cli::try_parse_from(args)
    }
}

/// The command line with the global options and each subcommand's name and aliases, its
/// arguments deferred until it is the one invoked. For parsing only: it has no help or
/// version text ([`Cli::parse_args`] falls back to the full definition for those).
fn lean_command() -> clap::Command {
    type Augment = fn(clap::Command) -> clap::Command;
    const SUBCOMMANDS: &[(&str, &[&str], Augment)] = &[
        ("add", &[], AddArgs::augment_args),
        ("get", &[], GetArgs::augment_args),
        ("list", &["images"], ListArgs::augment_args),
        ("inspect", &[], InspectArgs::augment_args),
        ("tag", &[], TagArgs::augment_args),
        ("rm", &[], RmArgs::augment_args),
        ("pin", &[], PinArgs::augment_args),
        ("unpin", &[], PinArgs::augment_args),
        ("info", &[], InfoArgs::augment_args),
        ("pull", &[], PullArgs::augment_args),
        ("push", &[], PushArgs::augment_args),
        ("export", &[], ExportArgs::augment_args),
        ("search", &[], SearchArgs::augment_args),
        ("login", &[], LoginArgs::augment_args),
        ("logout", &[], LogoutArgs::augment_args),
        ("gc", &[], GcArgs::augment_args),
        ("verify", &[], VerifyArgs::augment_args),
        ("init", &[], InitArgs::augment_args),
        ("doctor", &[], DoctorArgs::augment_args),
        ("migrate", &[], MigrateArgs::augment_args),
        ("config", &[], ConfigArgs::augment_args),
        ("tier", &[], TierArgs::augment_args),
        ("completions", &[], CompletionsArgs::augment_args),
    ];
    let mut cmd = GlobalArgs::augment_args(clap::Command::new("sregistry"))
        .subcommand_required(true)
        .disable_help_subcommand(true);
    for (name, aliases, augment) in SUBCOMMANDS {
        cmd = cmd.subcommand(
            clap::Command::new(*name)
                .visible_aliases(aliases.iter().copied())
                .defer(*augment),
        );
    }
    cmd
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Add(AddArgs),
    Get(GetArgs),
    #[command(visible_alias = "images")]
    List(ListArgs),
    Inspect(InspectArgs),
    Tag(TagArgs),
    Rm(RmArgs),
    Pin(PinArgs),
    /// Unpin an image: gc may remove it again once it is unused (pin undoes it).
    ///
    /// The name and its content stay; only the protection goes, and `add`, `tag` and `pull`
    /// may re-point the name again without --force. `NAME@blake3:<hex>` unpins only if the
    /// name points to that digest (else exit 3).
    Unpin(PinArgs),
    Info(InfoArgs),
    Pull(PullArgs),
    Push(PushArgs),
    Export(ExportArgs),
    Search(SearchArgs),
    Login(LoginArgs),
    Logout(LogoutArgs),
    Gc(GcArgs),
    Verify(VerifyArgs),
    Init(InitArgs),
    Doctor(DoctorArgs),
    Migrate(MigrateArgs),
    Config(ConfigArgs),
    Tier(TierArgs),
    Completions(CompletionsArgs),
}

/// Add an image file to the cache under a name, and print its cached path.
///
/// The file is copied into the cache and hashed in the same pass (or, with --move,
/// handed over without a copy when nobody else can write it). Identical content
/// under several names is stored once. Adding under a name that exists re-points the
/// name; the old content stays until `sregistry gc` or `rm` finds no name uses it. A
/// pinned name is not re-pointed to other content without --force (exit 1, nothing
/// changed); the name cannot carry a digest (exit 2).
///
/// Example: sregistry add ./tool.sif --name lab/tool:1.2 --label maintainer=alice
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The image file to add
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Name for it: [host/][namespace/]name[:tag] (default namespace `library`, tag `latest`)
    #[arg(long, short = 'n', value_name = "REF")]
    pub name: String,
    /// Move the file into the cache: no copy when it is on the cache's filesystem, has no
    /// other link and nobody has it open for writing (else a copy); the path is removed
    /// once the name is committed (exit 1 with a warning if it cannot be)
    #[arg(long = "move")]
    pub move_file: bool,
    /// Attach a label (repeatable)
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Re-point the name even if it is pinned (it stays pinned; the old content loses the pin's protection)
    #[arg(long)]
    pub force: bool,
}

/// Print the absolute path of a cached image, and nothing else.
///
/// Made for `singularity run $(sregistry get lab/tool:1.2)`: stdout holds only the path and a
/// newline. A name that is not cached exits with code 3 and a one-line message on stderr.
/// `NAME@blake3:<hex>` asks for that exact content.
///
/// With a remote reference (docker://, oras://, https://, s3://) it prints the cached path
/// if that remote was pulled before, and otherwise pulls it first: however many jobs ask
/// at the same moment, it is downloaded once (and a docker:// image converted once), and
/// every one of them prints the same path.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Image name [host/][namespace/]name[:tag][@blake3:<hex>], or a remote reference
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Allow plain HTTP to a remote that is not on this machine
    #[arg(long)]
    pub insecure: bool,
    /// S3 endpoint URL (else AWS_ENDPOINT_URL)
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Re-hash the file before answering; exit 4 if it does not match its digest
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub docker: DockerArgs,
}

/// Options of docker:// images.
#[derive(Debug, Args)]
pub struct DockerArgs {
    /// docker:// only: the platform to pull, os/arch[/variant] (default: this machine's)
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// docker:// only: the SIF's squashfs compression: gzip (default; every kernel mounts it), zstd, xz, lz4, lzo
    #[arg(long, value_name = "COMP", value_parser = ["gzip", "zstd", "xz", "lz4", "lzo"])]
    pub squashfs_comp: Option<String>,
}

/// List cached images: name, platform (docker:// images), short digest, size, when added
/// and last used, and the tier that holds it (when one does); `(private)` after a name in
/// the caller's private cache (in a shared cache).
///
/// PATTERN filters names: with `*` or `?` it is a glob over the whole name
/// (`'lab/*:1.*'`), otherwise a substring (`lab/`). Sorted by name. The caller's private
/// cache (in a shared cache) is looked in first, then the writable cache, then each tier
/// (--tier, `tiers`): a name shows once, from the first that has it, unless --all. --json
/// prints every field, with the path, `tier` (the tier's path, null for the writable
/// cache), `private` and `shadowed`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only names matching this glob or substring
    #[arg(value_name = "PATTERN")]
    pub pattern: Option<String>,

    /// Also show the names that an earlier cache shadows (a name that the caller's
    /// private cache, the writable cache or an earlier tier also has)
    #[arg(long)]
    pub all: bool,
}

/// Show everything recorded about an image, and its SIF header and objects.
///
/// `NAME@blake3:<hex>` shows it only if the name points to that digest (else exit 3).
///
/// For SIF files (what Apptainer and SingularityCE run) it also shows the architecture,
/// id and creation time, and each object: definition file, labels, partitions with their
/// filesystem and architecture, signatures.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image name
    #[arg(value_name = "REF")]
    pub reference: String,
}

/// Give a cached image another name (no copy).
///
/// `SRC@blake3:<hex>` tags only if SRC points to that digest (else exit 3); DST cannot
/// carry a digest (exit 2). A pinned DST is not re-pointed to other content without
/// --force (exit 1, nothing changed).
#[derive(Debug, Args)]
pub struct TagArgs {
    /// Existing image name
    #[arg(value_name = "SRC")]
    pub source: String,
    /// New name for the same content
    #[arg(value_name = "DST")]
    pub target: String,
    /// Re-point DST even if it is pinned (it stays pinned; its old content loses the pin's protection)
    #[arg(long)]
    pub force: bool,
}

/// Remove names from the cache; content no name uses any more is deleted at once.
///
/// All names must exist and be unpinned, or nothing is removed. `NAME@blake3:<hex>` is
/// removed only if it points to that digest (else exit 3, nothing removed).
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Image names to remove
    #[arg(value_name = "REF", required = true)]
    pub references: Vec<String>,
    /// Keep content that no name uses any more (until `sregistry gc`)
    #[arg(long)]
    pub keep_blob: bool,
}

/// Pin an image so that gc never removes it (unpin undoes it).
///
/// A pinned name is also kept from being re-pointed to other content by `add`, `tag` and
/// `pull` unless they are given --force. `NAME@blake3:<hex>` pins (or unpins) only if the
/// name points to that digest (else exit 3).
#[derive(Debug, Args)]
pub struct PinArgs {
    /// Image name
    #[arg(value_name = "REF")]
    pub reference: String,
}

/// Show the cache's location, format, counts and total size.
#[derive(Debug, Args)]
pub struct InfoArgs {}

/// Download an image into the cache and print its cached path.
///
/// REMOTE is docker://[HOST[:PORT]/]REPOSITORY[:TAG|@sha256:...] (a container image,
/// converted to SIF here; Docker Hub when there is no host), oras://HOST[:PORT]/REPOSITORY[:TAG|@sha256:...] (a SIF artifact in an OCI
/// registry, as `apptainer push oras://` writes it), https://URL, or s3://BUCKET/KEY. Every
/// byte is checked while it streams in: the registry's sha256 and the declared size; a
/// broken transfer is resumed. A docker:// image's layers are kept with it, so another
/// image with the same base layers downloads only its own. A remote unchanged since the
/// name was pulled from it is not downloaded again (only the manifest, or a conditional
/// HEAD, is asked for; --force downloads again; --json says `"downloaded": false`). The image is named after REMOTE without its scheme unless
/// --name says otherwise. A URL's query values (a signature, a token) are never stored or
/// shown, and a re-signed URL is the same image. Credentials come from `sregistry login` or ~/.docker/config.json
/// (and the credential helpers it names); S3 settings from the AWS_* environment variables.
///
/// Example: sregistry pull oras://registry.example.org/lab/tool:1.2
#[derive(Debug, Args)]
pub struct PullArgs {
    /// docker://..., oras://..., https://... or s3://...
    #[arg(value_name = "REMOTE")]
    pub remote: String,
    /// Local name for it
    #[arg(long, short = 'n', value_name = "REF")]
    pub name: Option<String>,
    /// Download again even if the remote is unchanged, and re-point the name even if it is pinned (it stays pinned; the old content loses the pin's protection)
    #[arg(long)]
    pub force: bool,
    /// Allow plain HTTP to a host that is not on this machine
    #[arg(long)]
    pub insecure: bool,
    /// S3 endpoint URL (else AWS_ENDPOINT_URL)
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    #[command(flatten)]
    pub docker: DockerArgs,
}

/// Write an image pulled from docker:// out as an OCI image layout.
///
/// DIR gets `oci-layout`, `index.json` (TAG in `org.opencontainers.image.ref.name`) and
/// `blobs/sha256/`: the image's config and layers, hard-linked from the cache where the
/// filesystem allows, copied where it does not, and an OCI manifest for them. DIR must be
/// new, empty, or an OCI layout already (TAG is added or re-pointed; else exit 2). `skopeo copy
/// oci:DIR:TAG ...` and `umoci unpack --image DIR:TAG` read it. Fails (exit 1, nothing
/// written) when gc has dropped a layer; `pull --force` of the source fetches it again.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Image name (pulled from docker://)
    #[arg(value_name = "REF")]
    pub reference: String,
    /// The OCI layout directory to write
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The tag in the layout (default: the name's tag): letters and digits in parts
    /// separated by one of `-._:@+`, `--` or `/` (the OCI layout's ref.name grammar)
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
}

/// Upload a cached image to an OCI registry (as a SIF artifact) or to S3.
///
/// Blobs the registry already has are not sent again. `NAME@blake3:<hex>` pushes only if
/// the name points to that digest (else exit 3).
///
/// Example: sregistry push lab/tool:1.2 oras://registry.example.org/lab/tool:1.2
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The cached image
    #[arg(value_name = "REF")]
    pub reference: String,
    /// oras://HOST/REPOSITORY[:TAG] or s3://BUCKET/KEY
    #[arg(value_name = "REMOTE")]
    pub remote: String,
    /// Allow plain HTTP to a host that is not on this machine
    #[arg(long)]
    pub insecure: bool,
    /// S3 endpoint URL (else AWS_ENDPOINT_URL)
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
}

/// List the tags of a repository (oras://HOST/REPO), or a registry's catalog (oras://HOST).
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// oras://HOST[/REPOSITORY]
    #[arg(value_name = "REMOTE")]
    pub remote: String,
    /// Allow plain HTTP to a host that is not on this machine
    #[arg(long)]
    pub insecure: bool,
}

/// Store credentials for a registry, after checking them against it.
///
/// Saved in ~/.config/sregistry/credentials.json with mode 0600 (a file group or others
/// have any access to is refused), keeping other hosts' entries. The password is read
/// from stdin with --password-stdin, else from SREGISTRY_PASSWORD; an empty user or
/// password, or a user with `:`, is refused. It is never printed.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Registry host[:port]
    #[arg(value_name = "HOST")]
    pub host: String,
    /// User name
    #[arg(long, short = 'u')]
    pub username: String,
    /// Read the password from stdin
    #[arg(long)]
    pub password_stdin: bool,
    /// Allow plain HTTP to a host that is not on this machine
    #[arg(long)]
    pub insecure: bool,
}

/// Forget the stored credentials for a registry.
#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Registry host[:port]
    #[arg(value_name = "HOST")]
    pub host: String,
}

/// Remove what is not needed, to keep the cache bounded (run it from cron).
///
/// Always removes content no name uses and leftovers of interrupted commands in tmp/
/// (older than --tmp-grace; never the files of a command still running, on any node).
/// With --max-age, removes names not used for that long; with --max-size, removes least
/// recently used names until the content fits. Never removes pinned names or names used
/// within --min-idle, nor, within --min-idle of its last use, what a name held before it
/// was re-pointed (`rm` of the name, or --min-idle 0, frees that at once). `get` waits at most milliseconds while gc
/// runs; a job that has an image open keeps reading it.
///
/// Sizes: 500G, 1.5TiB (binary), 200GB (decimal). Durations: 90d, 12h, 1d12h, 30m.
///
/// Example (nightly): sregistry gc --max-size 2T --max-age 90d -q
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Evict least recently used names until the content fits in SIZE
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Remove names not used for DURATION
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_age: Option<u64>,
    /// Never remove names used within DURATION (at least 10m, the precision of recorded uses)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1h")]
    pub min_idle: u64,
    /// Age after which leftovers in tmp/ are removed
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "6h")]
    pub tmp_grace: u64,
    /// Show what would be removed; change nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

/// Import the images of the old Python client (sregistry 0.2.39) from its database.
///
/// Reads DIR/sregistry.db (read-only: the old database is never written) and adds every
/// image whose file exists under `collection/name:tag`, with the row's facts as labels
/// (org.sregistry.migrate.version, .url, .uri, .metrics, .row, .created). Where a tag has
/// several rows, the newest that can be imported wins. A name already in the cache that
/// points to other content is left alone unless an earlier migrate put it there. A row whose file is gone, whose file no longer matches
/// its sha256 version, or whose name is not valid here even normalised (lower case, odd
/// characters turned into `-`) is not imported. A name normalised is said per row; so is
/// a collection taken from the row's uri because its collection row is gone. Running
/// it again adds nothing. Without --move the old files stay where they are.
///
/// Prints one line per imported row on stdout, one line per row not imported (why, the
/// row's uri and id, its file) on stderr. Exit 0 when every row is in the cache, 4 when
/// some row was not imported, 3 when there is no sregistry.db in DIR, 1 when it cannot be
/// read, is not the old client's, has an unfinished transaction (a hot sregistry.db-journal:
/// the message says how to roll it back), or a --move could not remove a file.
///
/// Example: sregistry migrate --from ~/.singularity --dry-run
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The old client's directory holding sregistry.db (or the database file itself)
    /// [default: $SREGISTRY_DATABASE, else ~/.singularity]
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    /// Show what would be imported; change nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Move the files into the cache (the rules of `add --move`) instead of copying them;
    /// the old database still lists them (exit 1 with a warning per file that cannot be
    /// removed)
    #[arg(long = "move")]
    pub move_files: bool,
}

/// Re-hash cached content and check the cache; quarantine what is corrupt.
///
/// Reports corrupt blobs (moved to quarantine/, so `get` refuses them), names whose content
/// is missing, orphan and foreign files under blobs/, and stray tmp/ files. Exits 4 when it
/// found a problem. --repair restores content from a name's recorded local source file when
/// that file still has the right digest. `NAME@blake3:<hex>` is checked only if the name
/// points to that digest (else exit 3).
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Only these images (default: everything)
    #[arg(value_name = "REF")]
    pub references: Vec<String>,
    /// Restore broken content from its recorded source where possible
    #[arg(long)]
    pub repair: bool,
    /// Age after which a tmp/ file counts as stray
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "6h")]
    pub tmp_grace: u64,
    /// Check each tier (--tier, `tiers`) instead of the writable cache, read-only: report
    /// only, nothing quarantined or repaired (publish the tier again)
    #[arg(long = "tiers", conflicts_with = "repair")]
    pub check_tiers: bool,
}

/// Publish a read-only tier: the caches every node reads after its writable one.
///
/// A tier is a cache an admin fills as any other (add, pull), then publishes to its
/// read-only home (CVMFS, an NFS export). Nodes list it in `tiers` (or --tier,
/// $SREGISTRY_TIERS) and never write it.
#[derive(Debug, Args)]
pub struct TierArgs {
    #[command(subcommand)]
    pub action: TierAction,
}

#[derive(Debug, Subcommand)]
pub enum TierAction {
    Publish(TierPublishArgs),
}

/// Publish the cache SRC as a new version of the tier DEST, atomically.
///
/// SRC's index and every image it records are copied into DEST/versions/<id> (an image
/// the current version holds whole is hard-linked from it, unless --copy), checked, and
/// only then made current by renaming the link DEST/current: a node reads the old version
/// or the new one whole, never a mix. Paths that `get` handed out name their version's
/// directory, which stays until --keep after `current` stopped naming it. DEST must be new,
/// empty or a tier, and neither inside SRC nor around it. Writers to SRC wait while its
/// index is copied. Tiers list DEST (or DEST/current).
///
/// Example: sregistry tier publish /staging/sregistry /cvmfs/img.example.org/sregistry
#[derive(Debug, Args)]
pub struct TierPublishArgs {
    /// The cache to publish
    #[arg(value_name = "SRC")]
    pub source: PathBuf,
    /// The tier's directory (created if missing)
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,
    /// How long a version stays after a newer one replaced it (jobs may still use its
    /// paths): removed by the first publish after that
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "7d")]
    pub keep: u64,
    /// Copy every image from SRC, linking none from the version before (the way to
    /// replace a tier's damaged file that `verify --tiers` found)
    #[arg(long)]
    pub copy: bool,
}

/// Create a cache; with --shared, one that a Unix group shares.
///
/// A shared cache gets setgid, group-writable directories, group-writable index and lock
/// files, and read-only content, with modes set explicitly whatever each user's umask; its
/// root is sticky and holds `private/` (3730, the caller's), where members' private caches
/// live, so that no member can move another's. The settings are recorded in the cache, so
/// every later command by any member keeps them.
/// Only a new or empty directory becomes a cache. On an existing cache, --shared re-applies
/// its group and modes, or gives it to another group (root, or a user who owns every file
/// that must change); a plain init never makes a shared cache private.
///
/// Example: sregistry init --shared --group hpc-containers /shared/containers
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The cache directory (default: the usual cache location)
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Make it a group cache
    #[arg(long, requires = "group")]
    pub shared: bool,
    /// The group that shares it: a name (from /etc/group, else `getent group`) or a number
    #[arg(long, value_name = "GROUP", requires = "shared")]
    pub group: Option<String>,
}

/// Check the cache: permissions, locks, filesystem, free space, index health.
///
/// Says which filesystem the cache is on (NFS, Lustre, GPFS are recognised) and what that
/// means for locking across nodes. Exits 4 with the list of problems if any check fails.
///
/// With --repair-index, rebuilds a damaged index from its journal (`v1/index.journal`)
/// instead: every name, blob record and pin comes back, no image is lost, and the damaged
/// index is kept beside it as `index.redb.damaged-<time>`. An index that is not damaged
/// is left alone.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Rebuild a damaged index from its journal, then exit
    #[arg(long)]
    pub repair_index: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    sregistry::format::units::parse_size(s).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<u64, String> {
    sregistry::format::units::parse_duration(s).map_err(|e| e.to_string())
}

/// Print the settings in effect and where each came from, or check a configuration file.
///
/// A setting comes from the last of these that gives it, key by key: its default,
/// /etc/sregistry/config.toml, $XDG_CONFIG_HOME/sregistry/config.toml (default
/// ~/.config/sregistry/config.toml), the file $SREGISTRY_CONFIG names, its SREGISTRY_*
/// variable, its flag. The output is TOML, each line ending in a comment that names its
/// source (file and line, variable, flag, default); the password is never shown. Every key,
/// its variable, flag and default: docs/configuration.md. A fault in a file (not TOML, an
/// unknown key, a wrong type or value) exits 2 naming the file, the line and the key.
///
/// Example: sregistry config --check /etc/sregistry/config.toml
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Check FILE as a configuration file, and nothing else: exit 0 and list its settings,
    /// or exit 2 naming the line and key of its first fault
    #[arg(long, value_name = "FILE")]
    pub check: Option<PathBuf>,
}

/// Print a shell completion script (bash, zsh, fish, elvish, powershell).
///
/// Example: sregistry completions bash > /etc/bash_completion.d/sregistry
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn argv(line: &str) -> Vec<std::ffi::OsString> {
        std::iter::once("sregistry")
            .chain(line.split_whitespace())
            .map(Into::into)
            .collect()
    }

    /// Command lines that parse, covering every subcommand, global options before and
    /// after the subcommand, aliases, defaults and repeated options.
    const VALID: &[&str] = &[
        "add f.sif --name lab/tool:1 --label a=b -l c=d --move --force",
        "--cache /c -q add f.sif -n lab/tool",
        "get lab/tool:1.2",
        "get --verify --insecure oras://h/a/b:1 --json --cache /x",
        "list",
        "images 'lab/*' --json",
        "inspect lab/tool",
        "tag a b",
        "tag --force a b",
        "rm a b c -q",
        "pin a",
        "unpin a",
        "info --json",
        "pull oras://h:5000/a/b:1 --name x --insecure --force",
        "pull docker://busybox --platform linux/arm64/v8 --squashfs-comp zstd",
        "get docker://h:5000/a/b:1 --platform linux/amd64",
        "pull s3://bucket/k.sif --endpoint http://127.0.0.1:9000 -n y",
        "push a oras://h/a/b:1",
        "export lab/tool:1 /tmp/layout --tag v1",
        "search oras://h/a/b",
        "login h -u alice --password-stdin",
        "logout h",
        "gc --max-size 2T --max-age 90d --min-idle 1h --tmp-grace 1d -n",
        "verify --repair a b",
        "init --shared --group hpc /shared/c",
        "doctor",
        "completions bash",
    ];

    #[test]
    fn the_lean_parse_reads_every_command_line_as_the_full_definition_does() {
        for line in VALID {
            let full = Cli::try_parse_from(argv(line))
                .unwrap_or_else(|e| panic!("`{line}` does not parse: {e}"));
            let m = lean_command()
                .try_get_matches_from(argv(line))
                .unwrap_or_else(|e| panic!("the lean parse refuses `{line}`: {e}"));
            let lean = Cli::from_arg_matches(&m).unwrap();
            assert_eq!(format!("{lean:?}"), format!("{full:?}"), "{line}");
        }
    }

    #[test]
    fn the_lean_command_names_every_subcommand_and_alias() {
        let names = |c: &clap::Command| {
            let mut v: Vec<String> = c
                .get_subcommands()
                .map(|s| {
                    let mut a: Vec<&str> = s.get_all_aliases().collect();
                    a.sort();
                    format!("{} {a:?}", s.get_name())
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&lean_command()), names(&Cli::command()));
    }

    #[test]
    fn help_version_and_errors_come_from_the_full_definition() {
        for line in [
            "--help",
            "get --help",
            "help add",
            "--version",
            "get",
            "bogus",
            "get a --nope",
            "",
        ] {
            let ours = Cli::parse_from_args(argv(line)).unwrap_err();
            let full = Cli::try_parse_from(argv(line)).unwrap_err();
            assert_eq!(ours.kind(), full.kind(), "`{line}`");
            assert_eq!(
                ours.render().to_string(),
                full.render().to_string(),
                "`{line}`"
            );
        }
    }
}
