//! Unix groups by name or number, resolved without glibc's name-service functions.
//!
//! The binary is linked statically (`.cargo/config.toml`). In a static binary glibc's
//! `getgrnam`, `getgrgid`, `getpwnam` and `getpwuid` still load the name-service modules
//! that `/etc/nsswitch.conf` names (`sss`, `ldap`, `systemd`) from the system's shared
//! libraries, and a module loaded that way crashes the process (SIGSEGV). sregistry
//! therefore never calls them. Instead:
//!
//! * a number is a group id and is taken as it is; its name, for messages only, comes from
//!   `/etc/group` when it is there, else the number stands for it;
//! * a name is looked up in `/etc/group` first, then by running `getent group NAME`: the
//!   system's own dynamically linked tool, which follows `nsswitch.conf` (LDAP, SSSD,
//!   systemd), so a cluster's project groups resolve as `ls -l` resolves them.
//!
//! Membership comes from the process's own credentials (`getegid`, `getgroups`: system
//! calls, no lookup).

use std::fs;
use std::io;
use std::process::{Command, Stdio};

use crate::error::ErrorKind;

/// A resolved group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
}

/// Why a group could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error(
        "no group `{0}` on this system (neither `/etc/group` nor `getent group {0}` knows it); give an existing group's name or its number"
    )]
    NotFound(String),
    #[error("`{0}` is not a group name or number ({1})")]
    Invalid(String, &'static str),
    #[error(
        "cannot look up group `{name}`: it is not in `/etc/group`, and `getent group {name}` {detail}; give the group's number instead"
    )]
    Getent { name: String, detail: String },
}

impl GroupError {
    /// A group that does not exist is a bad argument; a lookup that failed is I/O.
    pub fn kind(&self) -> ErrorKind {
        match self {
            GroupError::NotFound(_) | GroupError::Invalid(..) => ErrorKind::InvalidInput,
            GroupError::Getent { .. } => ErrorKind::Io,
        }
    }
}

/// The group `spec` names: a number (a gid, taken without any lookup) or a name.
pub fn resolve(spec: &str) -> Result<Group, GroupError> {
    if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) {
        let gid = spec
            .parse::<u32>()
            .ok()
            // (gid_t)-1 means "leave the group as it is" to chown.
            .filter(|&g| g != u32::MAX)
            .ok_or(GroupError::Invalid(
                spec.to_string(),
                "group id out of range",
            ))?;
        let name = etc_group(|g| g.gid == gid)
            .map(|g| g.name)
            .unwrap_or_else(|| spec.to_string());
        return Ok(Group { name, gid });
    }
    if spec.is_empty() || spec.starts_with('-') {
        return Err(GroupError::Invalid(
            spec.to_string(),
            "empty or starts with `-`",
        ));
    }
    if spec
        .chars()
        .any(|c| c == ':' || c.is_control() || c.is_whitespace())
    {
        return Err(GroupError::Invalid(
            spec.to_string(),
            "contains `:`, a space or a control character",
        ));
    }
    if let Some(g) = etc_group(|g| g.name == spec) {
        return Ok(g);
    }
    getent(spec)
}

/// Whether this process may give files to group `gid` (it is root, or a member).
pub fn may_use(gid: u32) -> bool {
    // SAFETY: geteuid and getegid have no preconditions.
    if unsafe { libc::geteuid() } == 0 || unsafe { libc::getegid() } == gid {
        return true;
    }
    // SAFETY: with size 0, getgroups only returns the count; then it fills a buffer of
    // that many entries.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n <= 0 {
        return false;
    }
    let mut groups = vec![0 as libc::gid_t; n as usize];
    let n = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    n > 0 && groups[..n as usize].contains(&gid)
}

/// The first line of `/etc/group` that `pick` accepts.
fn etc_group(pick: impl Fn(&Group) -> bool) -> Option<Group> {
    let text = fs::read_to_string("/etc/group").ok()?;
    text.lines().filter_map(parse_line).find(|g| pick(g))
}

/// One `group(5)` line: `name:password:gid:members`.
fn parse_line(line: &str) -> Option<Group> {
    let mut fields = line.split(':');
    let name = fields.next()?.trim();
    let gid = fields.nth(1)?.trim().parse::<u32>().ok()?;
    (!name.is_empty() && !name.starts_with(['#', '+', '-'])).then(|| Group {
        name: name.to_string(),
        gid,
    })
}

/// Ask the system's `getent` (found on `PATH`) for group `name`.
fn getent(name: &str) -> Result<Group, GroupError> {
    let failed = |detail: String| GroupError::Getent {
        name: name.to_string(),
        detail,
    };
    let out = Command::new("getent")
        .args(["group", name])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => failed("cannot run: `getent` is not on PATH".into()),
            _ => failed(format!("cannot run: {e}")),
        })?;
    match out.status.code() {
        // getent(1): 2 means the key was not found.
        Some(2) => Err(GroupError::NotFound(name.to_string())),
        Some(0) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(parse_line)
            .next()
            .ok_or_else(|| failed("printed no group line".into())),
        _ => {
            let err = String::from_utf8_lossy(&out.stderr);
            let err = err.lines().next().unwrap_or("").trim();
            Err(failed(format!(
                "failed ({}{}{err})",
                out.status,
                if err.is_empty() { "" } else { ": " }
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_lines_parse_and_comments_and_nis_entries_do_not() {
        assert_eq!(
            parse_line("hpc:x:4200:alice,bob"),
            Some(Group {
                name: "hpc".into(),
                gid: 4200
            })
        );
        assert_eq!(parse_line("ldap-grp:*:70001:").unwrap().gid, 70001);
        for bad in [
            "",
            "# comment:x:1:",
            "+:::",
            "-nis:x:3:",
            "x:x:notanumber:",
            "short",
        ] {
            assert_eq!(parse_line(bad), None, "{bad}");
        }
    }

    #[test]
    fn numbers_are_gids_without_a_lookup_and_bad_specs_are_refused() {
        let g = resolve("4294967294").unwrap();
        assert_eq!(g.gid, 4_294_967_294);
        for bad in ["4294967295", "99999999999", "", "-g", "a:b", "a b", "a\nb"] {
            assert!(
                matches!(resolve(bad), Err(GroupError::Invalid(..))),
                "{bad:?}"
            );
        }
    }
}
