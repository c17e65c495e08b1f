//! `sregistry login HOST -u USER`, `sregistry logout HOST`: stored registry credentials.

use std::io::Read;

use anyhow::{Context, Result};

use super::Ctx;
use crate::cli::exit::UsageError;
use crate::cli::{LoginArgs, LogoutArgs};
use sregistry::remote;

pub fn run(ctx: &Ctx, args: &LoginArgs) -> Result<()> {
    let password = if args.password_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the password from stdin")?;
        s.trim_end_matches(['\n', '\r']).to_string()
    } else if let Some(p) = &ctx.config.password {
        p.clone()
    } else {
        return Err(UsageError(
            "no password: pass --password-stdin (echo \"$TOKEN\" | sregistry login HOST -u USER --password-stdin) or set SREGISTRY_PASSWORD".into(),
        )
        .into());
    };
    let opts = super::remote_options(ctx, args.insecure, None)?;
    let host = remote::registry_host(&args.host)?;
    let path = remote::login(&host, &args.username, &password, &opts)?;
    if ctx.json {
        super::output::json(&serde_json::json!({
            "host": host,
            "username": args.username,
            "credentials_file": path,
        }))?;
        return Ok(());
    }
    ctx.say(format!(
        "logged in to {} as {} (saved in {})",
        host,
        args.username,
        path.display()
    ));
    Ok(())
}

pub fn logout(ctx: &Ctx, args: &LogoutArgs) -> Result<()> {
    let host = remote::registry_host(&args.host)?;
    let (path, removed) = remote::logout(&host)?;
    if ctx.json {
        super::output::json(&serde_json::json!({
            "host": host,
            "removed": removed,
            "credentials_file": path,
        }))?;
        return Ok(());
    }
    if removed {
        ctx.say(format!(
            "removed the credentials for {host} from {}",
            path.display()
        ));
    } else {
        ctx.say(format!(
            "no credentials for {host} were stored in {} (nothing to remove)",
            path.display()
        ));
    }
    Ok(())
}
