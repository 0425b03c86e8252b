//! Child processes with captured logs, and per-test scratch directories.
//!
//! A [`Proc`] writes its stdout and stderr to one log file in the test's
//! [`Scratch`] directory. When a test panics, every `Proc` still alive
//! prints the tail of its log as it is dropped, and the scratch directory
//! is kept (its path printed) for a closer look; otherwise it is removed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Lines of a log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// A temporary directory for one test: configuration files, data, logs.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A fresh directory under the system temp dir, named after `test`.
    pub fn new(test: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!(
            "portcullis-e2e-{test}-{}",
            portcullis_core::test_support::random_hex(4)
        ));
        std::fs::create_dir_all(&path).expect("create scratch dir");
        Scratch { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A running child process whose output goes to a log file.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout/stderr appended to
    /// `<scratch>/<name>.log`.
    pub fn spawn(scratch: &Scratch, name: &str, mut cmd: Command) -> Proc {
        let log = scratch.join(&format!("{name}.log"));
        let file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log file");
        let err = file.try_clone().expect("clone log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `true` while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `kill -9`: no chance to flush or clean up. Waits for the exit.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then up to `grace` for a clean exit, then `kill -9`.
    /// Returns `true` when the process exited by itself with status 0.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Sends a signal by name (`STOP`, `CONT`, `HUP`, ...).
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .status();
        }
    }

    /// Prints the last lines of the log to stderr, headed by the name.
    pub fn print_log_tail(&self) {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        eprintln!(
            "----- last {} lines of {} ({}) -----",
            lines.len() - from,
            self.name,
            self.log.display()
        );
        for line in &lines[from..] {
            eprintln!("{line}");
        }
        eprintln!("----- end of {} -----", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tail();
        }
        self.kill9();
    }
}
