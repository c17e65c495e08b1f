//! `sregistry login HOST -u USER`, `sregistry logout HOST`: stored registry credentials.

use std::io::Read;

use anyhow::{Context, Result};

use super::Ctx;
use crate::cli::exit::UsageError;
use crate::cli::{LoginArgs, LogoutArgs};
use sregistry::remote::{self, auth};

pub fn run(ctx: &Ctx, args: &LoginArgs) -> Result<()> {
    let password = if args.password_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the password from stdin")?;
        s.trim_end_matches(['\n', '\r']).to_string()
    } else if let Ok(p) = std::env::var("SREGISTRY_PASSWORD") {
        p
    } else {
        return Err(UsageError(
            "no password: pass --password-stdin (echo \"$TOKEN\" | sregistry login HOST -u USER --password-stdin) or set SREGISTRY_PASSWORD".into(),
        )
        .into());
    };
    let opts = super::remote_options(ctx, args.insecure, None)?;
    let path = remote::login(&args.host, &args.username, &password, &opts)?;
    ctx.say(format!(
        "logged in to {} as {} (saved in {})",
        args.host,
        args.username,
        path.display()
    ));
    Ok(())
}

pub fn logout(ctx: &Ctx, args: &LogoutArgs) -> Result<()> {
    let path = auth::store_credentials(&args.host, None)?;
    ctx.say(format!(
        "removed the credentials for {} from {}",
        args.host,
        path.display()
    ));
    Ok(())
}
