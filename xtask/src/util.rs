//! Small helpers shared by the subcommands: running commands with their output streamed to the user,
//! printing step lines with timings, and locating the workspace and tools.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The workspace root. xtask lives one level below it, and the path is fixed at compile time so the
/// subcommands behave the same whatever directory `cargo xtask` was started from.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// A `cargo` command in the workspace root. `$CARGO` is the cargo that started us, so nested builds use
/// the same toolchain as the outer `cargo xtask`.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

/// True when running as root: apt, namespaces and XDP all need it, and there is no sudo to fall back on.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Human-readable duration with one decimal, e.g. "12.3s".
pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Prints a step header in a form that stands out from streamed tool output.
pub fn say(scope: &str, msg: impl AsRef<str>) {
    println!("==> [{scope}] {}", msg.as_ref());
}

/// Shell-like rendering of a command line, so failures say exactly what to rerun by hand.
pub fn render(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())))
        .filter(|kv| !kv.starts_with("PATH=")) // the full PATH is noise; it is only ever prefixed
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs a command with inherited stdio (its output streams live) and returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    println!("    $ {}", render(cmd));
    cmd.status()
        .with_context(|| format!("could not start `{}`", render(cmd)))
}

/// Runs a command with inherited stdio and fails unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let st = status(cmd)?;
    if !st.success() {
        bail!("`{}` failed ({st})", render(cmd));
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout, or None if it could not start or failed. Used for
/// probes ("is X installed?") where failure is an answer, not an error.
pub fn probe<S: AsRef<OsStr>>(program: S, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Finds an executable on PATH, like `which`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `$CARGO_HOME/bin`, where `cargo install` puts bpf-linker.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|h| h.join("bin"))
}

/// PATH with `dir` in front, for child processes that must find a specific tool first.
pub fn path_with_prefix(dir: &Path) -> std::ffi::OsString {
    let mut dirs = vec![dir.to_path_buf()];
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).expect("PATH entries contain no ':'")
}

/// Times a closure; used for the per-stage summaries.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}
