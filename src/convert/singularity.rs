//! The parts of an OCI image config a SIF needs, and the `/.singularity.d/` tree that
//! Apptainer lays out for images built from OCI sources:
//!
//! * `env/10-docker2singularity.sh` exports the config's `Env`: `PATH` as the image sets
//!   it, every other variable only where the caller's environment does not set it already
//!   (Apptainer's rule, so that `APPTAINERENV_*` and `--env` still win). Values are written
//!   in single quotes: nothing in them is expanded;
//! * `runscript` runs `Entrypoint` followed by `Cmd`; arguments given to `run` replace
//!   `Cmd` (with no `Entrypoint`, they are the command). Each element is one shell word,
//!   as Docker's exec form passes it (Apptainer's "no eval" mode; its default mode also
//!   expands variables in them). With neither, the runscript starts `/bin/sh`;
//! * `labels.json` holds the config's `Labels`; `env/01-base.sh`, `90-environment.sh`,
//!   `99-base.sh`, `startscript`, `libs/` and `actions/{exec,run,shell,start,test}` are
//!   Apptainer's fixed files;
//! * top-level links `/.exec`, `/.run`, `/.shell`, `/.test`, `/singularity`,
//!   `/environment`, and the mount points `/dev`, `/proc`, `/sys`, `/home`, `/root`,
//!   `/tmp`, `/var/tmp`, `/etc`, with empty `/etc/hosts` and `/etc/resolv.conf`.
//!
//! The `/.singularity.d/` files replace whatever the image had there (they are what the
//! conversion defines); the top-level links and mount points are added only where the
//! image has nothing, and not at all where a parent is not a directory.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::merge::{Meta, Node, View, join};

/// What the conversion reads from the image config.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub working_dir: String,
    pub user: String,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RawInner>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawInner {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

impl ImageConfig {
    /// Parse an OCI (or Docker) image config; absent and `null` fields are empty.
    pub fn parse(json: &[u8]) -> Result<ImageConfig, serde_json::Error> {
        let raw: RawConfig = serde_json::from_slice(json)?;
        let inner = raw.config.unwrap_or_default();
        Ok(ImageConfig {
            architecture: raw.architecture,
            os: raw.os,
            env: inner.env.unwrap_or_default(),
            entrypoint: inner.entrypoint.unwrap_or_default(),
            cmd: inner.cmd.unwrap_or_default(),
            labels: inner.labels.unwrap_or_default(),
            working_dir: inner.working_dir.unwrap_or_default(),
            user: inner.user.unwrap_or_default(),
        })
    }
}

/// `s` as one single-quoted shell word.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn words(args: &[String]) -> String {
    args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

/// True for a name a POSIX shell can export.
fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// The text of `env/10-docker2singularity.sh`.
pub(crate) fn env_script(env: &[String]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# The image config's Env, written by sregistry's docker:// conversion.\n",
    );
    for item in env {
        let Some((name, value)) = item.split_once('=') else {
            continue;
        };
        if !is_shell_name(name) {
            s.push_str(&format!("# skipped (not a shell name): {}\n", quote(name)));
            continue;
        }
        if name == "PATH" {
            s.push_str(&format!("export PATH={}\n", quote(value)));
        } else {
            s.push_str(&format!(
                "if [ -z \"${{{name}:-}}\" ]; then {name}={}; fi\nexport {name}\n",
                quote(value)
            ));
        }
    }
    s
}

/// The text of `runscript`.
pub(crate) fn runscript(entrypoint: &[String], cmd: &[String]) -> String {
    let head = "#!/bin/sh\n# Entrypoint and Cmd of the image config; arguments replace Cmd.\n";
    let body = match (entrypoint.is_empty(), cmd.is_empty()) {
        (false, _) => format!(
            "if [ $# -eq 0 ]; then\n    set -- {}\nfi\nexec {} \"$@\"\n",
            words(cmd),
            words(entrypoint)
        ),
        (true, false) => format!(
            "if [ $# -eq 0 ]; then\n    set -- {}\nfi\nexec \"$@\"\n",
            words(cmd)
        ),
        (true, true) => "exec /bin/sh \"$@\"\n".to_string(),
    };
    // With an Entrypoint and no Cmd, `set --` with nothing leaves "$@" empty: fine.
    format!("{head}{body}")
}

const SOURCE_ENV: &str = "for script in /.singularity.d/env/*.sh; do\n    if [ -f \"$script\" ]; then\n        . \"$script\"\n    fi\ndone\n";

fn action(body: &str) -> String {
    format!("#!/bin/sh\n{SOURCE_ENV}{body}")
}

/// Add the `/.singularity.d/` tree, the top-level links and the mount points to `view`.
pub(crate) fn add(view: &mut View, image: &ImageConfig, now: u64) {
    let dir = Meta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: now,
    };
    let script = Meta { mode: 0o755, ..dir };
    let data = Meta { mode: 0o644, ..dir };
    let labels = serde_json::to_string_pretty(&image.labels).unwrap_or_else(|_| "{}".into());
    let files: Vec<(&str, String, Meta)> = vec![
        ("actions/exec", action("exec \"$@\"\n"), script),
        (
            "actions/run",
            action(
                "if [ -x /.singularity.d/runscript ]; then\n    exec /.singularity.d/runscript \"$@\"\nfi\necho \"no runscript in this image; running /bin/sh\" >&2\nexec /bin/sh \"$@\"\n",
            ),
            script,
        ),
        (
            "actions/shell",
            action("if [ -n \"${SINGULARITY_SHELL:-}\" ]; then\n    exec \"$SINGULARITY_SHELL\" \"$@\"\nfi\nif [ -x /bin/bash ]; then\n    exec /bin/bash --norc \"$@\"\nfi\nexec /bin/sh \"$@\"\n"),
            script,
        ),
        ("actions/start", action("if [ -x /.singularity.d/startscript ]; then\n    exec /.singularity.d/startscript \"$@\"\nfi\n"), script),
        ("actions/test", action("if [ -x /.singularity.d/test ]; then\n    exec /.singularity.d/test \"$@\"\nfi\necho \"no test script in this image\" >&2\nexit 0\n"), script),
        ("env/01-base.sh", "#!/bin/sh\n".into(), script),
        ("env/10-docker2singularity.sh", env_script(&image.env), script),
        ("env/90-environment.sh", "#!/bin/sh\n# Custom environment shell code should follow\n".into(), script),
        (
            "env/99-base.sh",
            "#!/bin/sh\nif [ -z \"${LD_LIBRARY_PATH:-}\" ]; then\n    LD_LIBRARY_PATH=/.singularity.d/libs\nelse\n    LD_LIBRARY_PATH=\"$LD_LIBRARY_PATH:/.singularity.d/libs\"\nfi\nPS1=\"Apptainer> \"\nexport LD_LIBRARY_PATH PS1\n".into(),
            script,
        ),
        ("runscript", runscript(&image.entrypoint, &image.cmd), script),
        ("startscript", "#!/bin/sh\n".into(), script),
        ("labels.json", labels + "\n", data),
    ];
    for d in ["", "/actions", "/env", "/libs"] {
        put(
            view,
            format!(".singularity.d{d}").as_bytes(),
            Node::Dir(dir),
            true,
        );
    }
    for (name, text, meta) in files {
        put(
            view,
            &join(b".singularity.d", name.as_bytes()),
            Node::Generated(text.into_bytes(), meta),
            true,
        );
    }
    let link = |to: &str| Node::Symlink(to.as_bytes().to_vec(), Meta { mode: 0o777, ..dir });
    for (name, to) in [
        (".exec", ".singularity.d/actions/exec"),
        (".run", ".singularity.d/actions/run"),
        (".shell", ".singularity.d/actions/shell"),
        (".test", ".singularity.d/actions/test"),
        ("singularity", ".singularity.d/runscript"),
        ("environment", ".singularity.d/env/90-environment.sh"),
    ] {
        put(view, name.as_bytes(), link(to), false);
    }
    let sticky = Meta {
        mode: 0o1777,
        ..dir
    };
    for (name, meta) in [
        ("dev", dir),
        ("proc", dir),
        ("sys", dir),
        ("home", dir),
        ("root", Meta { mode: 0o700, ..dir }),
        ("tmp", sticky),
        ("var", dir),
        ("var/tmp", sticky),
        ("etc", dir),
    ] {
        put(view, name.as_bytes(), Node::Dir(meta), false);
    }
    for name in ["etc/hosts", "etc/resolv.conf"] {
        put(
            view,
            name.as_bytes(),
            Node::Generated(Vec::new(), data),
            false,
        );
    }
}

/// Put `node` at `path`. With `replace`, whatever is there (or at a parent that is not a
/// directory) gives way; without, nothing is changed where anything is already there.
fn put(view: &mut View, path: &[u8], node: Node, replace: bool) {
    let mut at = 0;
    while let Some(i) = path[at..].iter().position(|&b| b == b'/') {
        let parent = &path[..at + i];
        match view.nodes.get(parent) {
            Some(Node::Dir(_)) => {}
            None => {
                view.nodes
                    .insert(parent.to_vec(), Node::Dir(Meta::IMPLICIT_DIR));
            }
            Some(_) if replace => {
                view.remove_subtree(parent);
                view.nodes
                    .insert(parent.to_vec(), Node::Dir(Meta::IMPLICIT_DIR));
            }
            Some(_) => return,
        }
        at += i + 1;
    }
    match view.nodes.get(path) {
        None => {
            view.nodes.insert(path.to_vec(), node);
        }
        Some(Node::Dir(_)) if matches!(node, Node::Dir(_)) => {}
        Some(_) if replace => {
            view.remove_subtree(path);
            view.nodes.insert(path.to_vec(), node);
        }
        Some(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The additions never overwrite the image's own top-level entries, never write under
    /// a parent that is not a directory (an `/etc` symlink), and the `/.singularity.d`
    /// files replace what the image had there.
    #[test]
    fn additions_respect_the_image() {
        let m = Meta {
            mode: 0o644,
            uid: 7,
            gid: 7,
            mtime: 1,
        };
        let mut view = View::default();
        view.nodes
            .insert(b"etc".to_vec(), Node::Symlink(b"private/etc".to_vec(), m));
        view.nodes
            .insert(b"tmp".to_vec(), Node::Generated(b"a file".to_vec(), m));
        view.nodes.insert(b"singularity".to_vec(), Node::Dir(m));
        view.nodes
            .insert(b".singularity.d".to_vec(), Node::Symlink(b"/".to_vec(), m));
        let image = ImageConfig {
            cmd: vec!["/bin/true".into()],
            ..ImageConfig::default()
        };
        add(&mut view, &image, 5);
        assert_eq!(
            view.nodes[&b"etc"[..]],
            Node::Symlink(b"private/etc".to_vec(), m)
        );
        assert!(!view.nodes.contains_key(&b"etc/hosts"[..]));
        assert_eq!(
            view.nodes[&b"tmp"[..]],
            Node::Generated(b"a file".to_vec(), m)
        );
        assert_eq!(view.nodes[&b"singularity"[..]], Node::Dir(m));
        assert!(matches!(view.nodes[&b".singularity.d"[..]], Node::Dir(_)));
        match &view.nodes[&b".singularity.d/runscript"[..]] {
            Node::Generated(text, meta) => {
                assert!(String::from_utf8_lossy(text).contains("'/bin/true'"));
                assert_eq!((meta.mode, meta.uid), (0o755, 0));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(view.nodes[&b"proc"[..]], Node::Dir(_)));
        assert!(matches!(view.nodes[&b".run"[..]], Node::Symlink(..)));
    }

    #[test]
    fn config_fields_and_nulls() {
        let c = ImageConfig::parse(
            br#"{"architecture":"arm64","os":"linux","config":{"Env":["A=1"],"Entrypoint":null,"Cmd":["sh","-c","echo hi"],"Labels":{"k":"v"}}}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, "arm64");
        assert_eq!(c.env, ["A=1"]);
        assert!(c.entrypoint.is_empty());
        assert_eq!(c.cmd, ["sh", "-c", "echo hi"]);
        assert_eq!(c.labels["k"], "v");
        assert!(ImageConfig::parse(b"{}").unwrap().cmd.is_empty());
        assert!(ImageConfig::parse(b"[").is_err());
    }

    /// The generated scripts behave as documented when a real shell runs them: Env is
    /// exported literally (quotes and `$` included), a caller's value wins except for
    /// PATH, and arguments replace Cmd but not Entrypoint.
    #[test]
    fn scripts_run_in_sh() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_script(&[
            "PATH=/opt/bin:/bin:/usr/bin".into(),
            "GREETING=it's $HOME".into(),
            "KEEP=image".into(),
            "1BAD=x".into(),
        ]);
        std::fs::write(dir.path().join("env.sh"), env).unwrap();
        let run = |script: String, args: &[&str]| {
            let p = dir.path().join("run.sh");
            std::fs::write(
                &p,
                format!(
                    ". {}/env.sh\n{}",
                    dir.path().display(),
                    script.replace("#!/bin/sh\n", "")
                ),
            )
            .unwrap();
            let out = std::process::Command::new("/bin/sh")
                .arg(&p)
                .args(args)
                .env_clear()
                .env("KEEP", "caller")
                .env("PATH", "/bin:/usr/bin")
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let printer = |cmd: &[&str]| cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let show = printer(&[
            "/bin/sh",
            "-c",
            "echo \"$GREETING|$KEEP|$PATH|$*\"",
            "argv0",
        ]);
        assert_eq!(
            run(runscript(&[], &show), &[]),
            "it's $HOME|caller|/opt/bin:/bin:/usr/bin|\n"
        );
        // Arguments replace Cmd entirely.
        assert_eq!(run(runscript(&[], &show), &["echo", "a b"]), "a b\n");
        // With an Entrypoint, arguments replace only Cmd.
        let ep = printer(&["/bin/echo", "ep"]);
        assert_eq!(
            run(runscript(&ep, &printer(&["c1", "c 2"])), &[]),
            "ep c1 c 2\n"
        );
        assert_eq!(
            run(runscript(&ep, &printer(&["c1"])), &["x", "y"]),
            "ep x y\n"
        );
        assert_eq!(run(runscript(&ep, &[]), &[]), "ep\n");
    }
}
