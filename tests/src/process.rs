//! Small helpers for the child processes the harness runs (OpenBao, the agent, the
//! gateway).

use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// `GET url` on a child process's HTTP endpoint: status code and body text.
pub async fn http_get(http: &reqwest::Client, url: &str) -> Result<(u16, String)> {
    send_for_text(http.get(url), &format!("GET {url}")).await
}

/// Sends `request` (described as `what` in errors): status code and body text.
pub async fn send_for_text(request: reqwest::RequestBuilder, what: &str) -> Result<(u16, String)> {
    let resp = request.send().await.with_context(|| what.to_owned())?;
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .await
        .with_context(|| format!("reading {what}"))?;
    Ok((status, body))
}

/// Sends `signal` to a child process.
pub fn signal_child(child: &Child, signal: Signal) -> Result<()> {
    let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
    kill(pid, signal).with_context(|| format!("sending {signal} to pid {pid}"))
}

/// Sends SIGSTOP and waits until every thread of the process is stopped: `kill` returns
/// before the kernel has stopped threads running on other CPUs, which may still answer
/// a request sent right after it.
pub async fn stop_child(child: &Child) -> Result<()> {
    signal_child(child, Signal::SIGSTOP)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all_threads_stopped(child.id()) {
        if Instant::now() >= deadline {
            bail!("pid {} did not stop within 5 s of SIGSTOP", child.id());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Whether every thread of `pid` is in state T (stopped) according to /proc.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "tid (comm) S ...": the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if !matches!(state, Some("T" | "t")) {
            return false;
        }
        any = true;
    }
    any
}

/// Waits (without blocking the runtime) until `child` exits; fails after `timeout`.
pub async fn wait_for_exit(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            bail!("pid {} did not exit within {timeout:?}", child.id());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Finds an executable called `name` in the directories of `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The last `lines` lines of `text`, for error messages.
pub fn log_tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Environment variable: when set, the harness keeps every temporary directory (configs,
/// logs, OpenBao's data) and prints where it is.
pub const KEEP_DIRS_ENV: &str = "KEYGATE_TEST_KEEP";

/// Whether [`KEEP_DIRS_ENV`] is set.
pub fn keep_dirs() -> bool {
    std::env::var_os(KEEP_DIRS_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// On drop of a process handle: print the end of its log to stderr if the test is
/// failing (the test runner shows it with the failure), and keep its directory if
/// [`KEEP_DIRS_ENV`] is set.
pub fn report_on_drop(
    what: &str,
    dir: &mut tempfile::TempDir,
    log: &std::path::Path,
    lines: usize,
) {
    if std::thread::panicking() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        eprintln!(
            "---- {what}: last {lines} lines of {} ----\n{}\n---- end of {what} log ----",
            log.display(),
            log_tail(&text, lines)
        );
    }
    if keep_dirs() {
        dir.disable_cleanup(true);
        eprintln!("{what}: kept {}", dir.path().display());
    }
}
