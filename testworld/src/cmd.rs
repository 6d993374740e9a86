//! Running the `ip`/`sysctl` configuration commands that build a world: one place that turns a
//! failed command into an error carrying its stderr, so every set-up step fails the same way.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs a configuration command, failing with its stderr.
pub(crate) fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
