//! Starting an exec'd command as a local process: on pipes, or on a
//! pseudo-terminal (`pty-process`) when a TTY is asked for.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};

/// Where the client's stdin goes.
pub(crate) enum Input {
    /// The command has no stdin (or it was closed).
    None,
    /// A pipe to the process.
    Pipe(ChildStdin),
    /// The terminal's master side (also where resizes go).
    Pty(pty_process::OwnedWritePty),
}

impl Input {
    /// Writes client input; an error (the process stopped reading) drops the input.
    pub(crate) async fn write(&mut self, data: &[u8]) {
        let ok = match self {
            Self::None => true,
            Self::Pipe(p) => p.write_all(data).await.is_ok(),
            Self::Pty(p) => p.write_all(data).await.is_ok(),
        };
        if !ok {
            *self = Self::None;
        }
    }

    /// End of input: the pipe is closed; a terminal gets its EOF character
    /// (Ctrl-D), as a terminal user would type it.
    pub(crate) async fn close(&mut self) {
        if let Self::Pty(p) = self {
            let _ = p.write_all(&[0x04]).await;
            return;
        }
        *self = Self::None;
    }

    /// Applies a terminal size (ignored without a terminal).
    pub(crate) fn resize(&self, width: u16, height: u16) {
        if let Self::Pty(p) = self {
            // A failed resize leaves the old size, as a terminal would.
            let _ = p.resize(pty_process::Size::new(height, width));
        }
    }
}

/// An output of the process and the channel it goes out on.
pub(crate) type Output = (u8, Box<dyn AsyncRead + Send + Unpin>);

/// A started process.
pub(crate) struct Spawned {
    pub child: Child,
    pub input: Input,
    pub outputs: Vec<Output>,
    /// Kills the command's process group when dropped.
    pub group: Group,
}

/// The process group the command leads (its own, on pipes or a pty): what
/// it started in the background goes with it when the session ends, so an
/// exec leaves nothing running behind.
pub(crate) struct Group(Option<rustix::process::Pid>);

impl Group {
    fn of(child: &Child) -> Self {
        Self(
            child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(rustix::process::Pid::from_raw),
        )
    }

    /// Kills every process left in the group.
    pub(crate) fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            // ESRCH: the group is already gone.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What to start and which streams the client asked for.
pub(crate) struct Plan<'a> {
    pub command: &'a [String],
    pub dir: &'a Path,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Starts the process; the error is what the runtime would report.
pub(crate) fn spawn(plan: &Plan<'_>) -> Result<Spawned, String> {
    std::fs::create_dir_all(plan.dir)
        .map_err(|e| format!("creating the scratch directory {}: {e}", plan.dir.display()))?;
    let (program, args) = plan
        .command
        .split_first()
        .ok_or_else(|| "no command".to_owned())?;
    if plan.tty {
        let (pty, pts) = pty_process::open().map_err(|e| format!("opening a pty: {e}"))?;
        // 80x24 until the client sends its size, like a fresh terminal.
        let _ = pty.resize(pty_process::Size::new(24, 80));
        let child = pty_process::Command::new(program)
            .args(args)
            .current_dir(plan.dir)
            .env("TERM", "xterm")
            .kill_on_drop(true)
            .spawn(pts)
            .map_err(|e| not_started(program, &e.to_string()))?;
        let (read, write) = pty.into_split();
        let mut outputs: Vec<Output> = Vec::new();
        if plan.stdout {
            outputs.push((1, Box::new(read)));
        }
        // Kept without stdin too: resizes go through it.
        let input = Input::Pty(write);
        // pty-process makes the child a session (and group) leader.
        let group = Group::of(&child);
        return Ok(Spawned {
            child,
            input,
            outputs,
            group,
        });
    }
    let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(plan.dir)
        .stdin(pipe(plan.stdin))
        .stdout(pipe(plan.stdout))
        .stderr(pipe(plan.stderr))
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| not_started(program, &e.to_string()))?;
    let mut outputs: Vec<Output> = Vec::new();
    if let Some(out) = child.stdout.take() {
        outputs.push((1, Box::new(out)));
    }
    if let Some(err) = child.stderr.take() {
        outputs.push((2, Box::new(err)));
    }
    let input = child.stdin.take().map_or(Input::None, Input::Pipe);
    let group = Group::of(&child);
    Ok(Spawned {
        child,
        input,
        outputs,
        group,
    })
}

/// runc's message for a command that could not start.
fn not_started(program: &str, why: &str) -> String {
    format!(
        "OCI runtime exec failed: exec failed: unable to start container process: exec: \"{program}\": {why}: unknown"
    )
}
