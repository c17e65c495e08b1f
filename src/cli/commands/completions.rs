//! `sregistry completions SHELL`: a completion script on stdout.

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

/// The script is made in memory and written in one go, so a closed stdout (`| head -1`)
/// is an error `main` treats as the end of output, not a panic inside the generator.
pub fn run(args: &CompletionsArgs) -> Result<()> {
    use std::io::Write;
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "sregistry", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(())
}
