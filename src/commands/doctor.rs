//! `sregistry doctor`: check the cache (see [`crate::doctor`]).

use anyhow::Result;

use super::{Ctx, output};
use crate::cli::DoctorArgs;
use crate::doctor::{self, Status};
use crate::exit::{ExitStatus, Reported};

pub fn run(ctx: &Ctx, _args: &DoctorArgs) -> Result<()> {
    let checks = doctor::run(&ctx.cache, ctx.lock.kind);
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if ctx.json {
        output::json(&checks)?;
    } else {
        for c in &checks {
            let tag = match c.status {
                Status::Pass => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            output::line(format!("{tag} {:<12} {}", c.check, c.detail))?;
        }
    }
    if failed > 0 {
        if !ctx.json {
            eprintln!("doctor found {failed} problem(s)");
        }
        return Err(Reported {
            status: ExitStatus::Problem,
        }
        .into());
    }
    Ok(())
}
