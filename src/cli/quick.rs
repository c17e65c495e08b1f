//! The two hot command lines read without clap: `get REF` and `add FILE --name REF`, as
//! batch jobs and scripts type them thousands of times.
//!
//! Even the lean parse ([`super::Cli::parse_args`]) costs a process about 250,000
//! instructions: a third of a whole `get`. [`parse`] accepts only the plain forms of these
//! two subcommands, with the global options anywhere:
//!
//! ```text
//! [--cache DIR | --cache=DIR] [--json] [-q | --quiet] get REF
//! [--cache DIR | --cache=DIR] [--json] [-q | --quiet] add FILE (-n | --name) REF
//!     [--move] [--force] [(-l | --label) KEY=VALUE]...
//! ```
//!
//! and answers `None` for anything else: another subcommand, an option it does not know,
//! an option given twice (but `--label`), a value or positional that is empty or starts
//! with `-`, `--`, bundled short flags, `-n=REF`, an argument that is not UTF-8. clap then
//! parses the line, so every help text, error and exit code is clap's. What it does
//! accept it reads exactly as clap does: a test compares the two on generated lines.

use std::ffi::OsString;
use std::path::PathBuf;

use super::args::{AddArgs, Cli, Command, DockerArgs, GetArgs, GlobalArgs};

/// The arguments (the first is the program's name) as clap would read them, when they
/// are one of the plain forms above; `None` otherwise.
pub(super) fn parse(args: &[OsString]) -> Option<Cli> {
    let mut it = args.iter().skip(1).map(|a| a.to_str());
    let mut global = Globals::default();
    let mut sub: Option<Sub> = None;
    while let Some(arg) = it.next() {
        let arg = arg?;
        if global.take(arg, &mut it)? {
            continue;
        }
        match &mut sub {
            None => {
                sub = Some(match arg {
                    "get" => Sub::Get { reference: None },
                    "add" => Sub::Add(Add::default()),
                    _ => return None,
                })
            }
            Some(sub) => sub.take(arg, &mut it)?,
        }
    }
    let global = GlobalArgs {
        cache: global.cache.map(PathBuf::from),
        json: global.json,
        quiet: global.quiet,
        offline: false,
        tiers: Vec::new(),
    };
    let command = match sub? {
        Sub::Get { reference } => Command::Get(GetArgs {
            reference: reference?.to_string(),
            insecure: false,
            endpoint: None,
            verify: false,
            docker: DockerArgs {
                platform: None,
                squashfs_comp: None,
            },
        }),
        Sub::Add(add) => Command::Add(AddArgs {
            file: PathBuf::from(add.file?),
            name: add.name?.to_string(),
            move_file: add.move_file,
            labels: add.labels.into_iter().map(str::to_string).collect(),
            force: add.force,
        }),
    };
    Some(Cli { global, command })
}

/// A value as clap takes it without complaint: not empty, not looking like an option.
fn plain(v: &str) -> Option<&str> {
    (!v.is_empty() && !v.starts_with('-')).then_some(v)
}

/// The next argument as the value of the option before it.
fn value<'a>(it: &mut impl Iterator<Item = Option<&'a str>>) -> Option<&'a str> {
    plain(it.next()??)
}

/// Set `slot` once: a second time is clap's error to report.
fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v);
    Some(())
}

/// Set a flag once.
fn flag(slot: &mut bool) -> Option<()> {
    if *slot {
        return None;
    }
    *slot = true;
    Some(())
}

#[derive(Default)]
struct Globals<'a> {
    cache: Option<&'a str>,
    json: bool,
    quiet: bool,
}

impl<'a> Globals<'a> {
    /// Take `arg` (and its value) if it is a global option: `Some(true)` when taken,
    /// `Some(false)` when it is not one, `None` when clap must read the line.
    fn take(
        &mut self,
        arg: &'a str,
        it: &mut impl Iterator<Item = Option<&'a str>>,
    ) -> Option<bool> {
        match arg {
            "--cache" => once(&mut self.cache, value(it)?)?,
            "--json" => flag(&mut self.json)?,
            "-q" | "--quiet" => flag(&mut self.quiet)?,
            _ => match arg.strip_prefix("--cache=") {
                Some(v) => once(&mut self.cache, plain(v)?)?,
                None => return Some(false),
            },
        }
        Some(true)
    }
}

enum Sub<'a> {
    Get { reference: Option<&'a str> },
    Add(Add<'a>),
}

#[derive(Default)]
struct Add<'a> {
    file: Option<&'a str>,
    name: Option<&'a str>,
    move_file: bool,
    force: bool,
    labels: Vec<&'a str>,
}

impl<'a> Sub<'a> {
    /// Take an argument after the subcommand (not a global option).
    fn take(&mut self, arg: &'a str, it: &mut impl Iterator<Item = Option<&'a str>>) -> Option<()> {
        match self {
            Sub::Get { reference } => once(reference, plain(arg)?),
            Sub::Add(add) => match arg {
                "-n" | "--name" => once(&mut add.name, value(it)?),
                "-l" | "--label" => {
                    add.labels.push(value(it)?);
                    Some(())
                }
                "--move" => flag(&mut add.move_file),
                "--force" => flag(&mut add.force),
                _ => {
                    if let Some(v) = arg.strip_prefix("--name=") {
                        once(&mut add.name, plain(v)?)
                    } else if let Some(v) = arg.strip_prefix("--label=") {
                        add.labels.push(plain(v)?);
                        Some(())
                    } else {
                        once(&mut add.file, plain(arg)?)
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn argv(words: &[&str]) -> Vec<OsString> {
        std::iter::once("sregistry")
            .chain(words.iter().copied())
            .map(Into::into)
            .collect()
    }

    /// Every line the quick parse accepts, clap reads the same way; `must` lines are
    /// ones it has to accept (else the hot path is slow again).
    fn agrees(words: &[&str], must: bool) {
        let args = argv(words);
        let quick = parse(&args);
        assert!(
            !must || quick.is_some(),
            "the quick parse refused {words:?}"
        );
        if let Some(quick) = quick {
            let full = Cli::try_parse_from(args.clone())
                .unwrap_or_else(|e| panic!("clap refuses {words:?}, the quick parse took it: {e}"));
            assert_eq!(format!("{quick:?}"), format!("{full:?}"), "{words:?}");
        }
    }

    #[test]
    fn the_quick_parse_reads_the_hot_lines_as_clap_does() {
        for line in [
            "get lab/tool:1.2",
            "--cache /c get lab/tool:1.2",
            "get lab/tool:1.2 --cache=/c -q --json",
            "--quiet get docker://lab/tool:1.2",
            "add f.sif --name lab/tool:1",
            "--cache /c -q add f.sif -n lab/tool",
            "add --name=lab/t:1 f.sif --move --force -l a=b --label c=d --label=e=f",
            "add -n x f --cache /c --json",
        ] {
            agrees(&line.split(' ').collect::<Vec<_>>(), true);
        }
    }

    #[test]
    fn the_quick_parse_leaves_the_rest_to_clap() {
        for line in [
            "",
            "get",
            "get a b",
            "get --verify a",
            "get -- a",
            "get -a",
            "get a --json --json",
            "-qq get a",
            "--cache get a",
            "--cache= get a",
            "--cache -x get a",
            "list",
            "add f.sif",
            "add f.sif --name",
            "add f.sif --name -x",
            "add f.sif -n a -n b",
            "add f.sif -n= a",
            "add f.sif -n=a",
            "add --move --move f -n a",
            "add f g -n a",
            "add - -n a",
            "add f -n a --help",
            "--version",
            "get --help",
        ] {
            let words: Vec<&str> = line.split(' ').filter(|w| !w.is_empty()).collect();
            assert!(parse(&argv(&words)).is_none(), "{line:?}");
        }
        let not_utf8: OsString = std::os::unix::ffi::OsStringExt::from_vec(b"f\xff".to_vec());
        let args: Vec<OsString> = vec![
            "sregistry".into(),
            "add".into(),
            not_utf8,
            "-n".into(),
            "a".into(),
        ];
        assert!(parse(&args).is_none());
    }

    /// Lines made of the hot commands' pieces and some the quick parse does not know,
    /// in random orders: whatever it accepts, clap reads the same way, and it does accept
    /// a good share of them (else this would prove nothing).
    #[test]
    fn the_quick_parse_never_disagrees_with_clap() {
        const EXTRA: &[&[&str]] = &[
            &["--cache", "/c"],
            &["--cache=/c"],
            &["--cache="],
            &["--json"],
            &["-q"],
            &["--quiet"],
            &["--move"],
            &["--force"],
            &["-l", "k=v"],
            &["--label", "a=b"],
            &["--label=k=v"],
            &["--name=x"],
            &["-n", "y"],
            &["--verify"],
            &["--"],
            &["-x"],
            &[""],
            &["-"],
            &["list"],
            &["f2"],
            &["--cache"],
            &["-n"],
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut accepted = 0;
        for _ in 0..3000 {
            let mut groups: Vec<&[&str]> = if next(2) == 0 {
                vec![&["get"], &["lab/t:1"]]
            } else {
                vec![&["add"], &["f.sif"], &["--name", "lab/t:1"]]
            };
            for _ in 0..next(4) {
                groups.push(EXTRA[next(EXTRA.len())]);
            }
            // Keep the subcommand first among its own words most of the time.
            let first = groups.remove(0);
            for i in (1..groups.len()).rev() {
                groups.swap(i, next(i + 1));
            }
            let at = if next(4) == 0 {
                next(groups.len() + 1)
            } else {
                0
            };
            groups.insert(at, first);
            let words: Vec<&str> = groups.concat();
            agrees(&words, false);
            accepted += usize::from(parse(&argv(&words)).is_some());
        }
        assert!(
            accepted > 600,
            "the quick parse took only {accepted} of 3000 lines"
        );
    }
}
