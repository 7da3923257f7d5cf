//! Running external commands with errors that name the command.

use anyhow::{Context as _, Result, bail};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The command line as a user would type it, for messages.
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            // The VM script is many lines: its first is enough to name it.
            let first = arg.lines().next().unwrap_or_default();
            let more = if arg.lines().nth(1).is_some() {
                " …"
            } else {
                ""
            };
            s.push_str(&format!(" '{first}{more}'"));
        } else {
            s.push(' ');
            s.push_str(&arg);
        }
    }
    s
}

/// Runs with inherited stdio (the user sees its progress); fails on non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs capturing stdout and stderr; fails on non-zero exit with stderr in the error.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out: Output = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Seconds with one decimal, for messages.
pub fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
