//! Crash points for the crash-consistency tests (`tests/e2e/`). The agent and the controller call
//! [`point`] with a name at each step of create, expand and delete; when the environment variable
//! `STRATA_FAULT_POINT` equals that name, the process aborts on the spot (`std::process::abort`:
//! no destructors, no graceful shutdown, as with `kill -9`), so that a test can restart it and
//! check that the system converges. Otherwise a call costs one comparison: the variable is read
//! once per process and cached.
//!
//! Only with the cargo feature `fault-injection` (off by default; `strata-tests` turns it on, so
//! the test and e2e builds have it). Without it [`point`] is an empty inline function and the
//! variable is never read: release builds (`cargo build --release -p csi-agent`, the Dockerfile)
//! carry no crash points.

use std::sync::OnceLock;

/// The variable naming the point at which the process aborts.
pub const ENV: &str = "STRATA_FAULT_POINT";

/// Whether this build has crash points (the `fault-injection` feature).
pub const ENABLED: bool = cfg!(feature = "fault-injection");

static ARMED: OnceLock<Option<String>> = OnceLock::new();

/// The point this process aborts at, if any (always `None` without the feature).
pub fn armed() -> Option<&'static str> {
    if !ENABLED {
        return None;
    }
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

/// The prefix of a value that stops (SIGSTOP) instead of aborting: `stop:<point>`.
pub const STOP_PREFIX: &str = "stop:";

/// A `stop:` point stops the process once; after SIGCONT it runs on through the same point.
#[cfg(feature = "fault-injection")]
static STOPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Aborts the process if `STRATA_FAULT_POINT` is `name`; stops it (SIGSTOP, as a paused VM or a
/// frozen container would be) the first time it is reached if the variable is `stop:name`, so
/// that a test can let the rest of the system move on and then continue it with SIGCONT; does
/// nothing otherwise.
#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    match armed() {
        Some(armed) if armed == name => {
            eprintln!("{ENV}={name}: fault point reached, aborting");
            std::process::abort();
        }
        Some(armed)
            if armed.strip_prefix(STOP_PREFIX) == Some(name)
                && !STOPPED.swap(true, std::sync::atomic::Ordering::SeqCst) =>
        {
            eprintln!("{ENV}={armed}: fault point reached, stopping until SIGCONT");
            if let Err(e) = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP) {
                eprintln!("{ENV}={armed}: cannot stop: {e}; aborting");
                std::process::abort();
            }
        }
        _ => {}
    }
}

/// Does nothing: this build has no crash points (see the module head).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    /// Run as a child by `an_armed_point_aborts_only_with_the_feature`; does nothing in a
    /// normal run.
    #[test]
    fn child_hits_points() {
        point("fault.test.other");
        point("fault.test.armed");
    }

    #[test]
    fn an_armed_point_aborts_only_with_the_feature() {
        if std::env::var_os(ENV).is_some() {
            return; // this is the child
        }
        let exe = std::env::current_exe().unwrap();
        let run = |value: &str| {
            Command::new(&exe)
                .args(["--exact", "fault::tests::child_hits_points", "--nocapture"])
                .env(ENV, value)
                .output()
                .unwrap()
        };
        let hit = run("fault.test.armed");
        if ENABLED {
            assert_eq!(hit.status.signal(), Some(6), "expected SIGABRT: {hit:?}");
            assert!(String::from_utf8_lossy(&hit.stderr).contains("fault.test.armed"));
        } else {
            // Without the feature the armed point is compiled out: the child runs to the end.
            assert!(hit.status.success(), "{hit:?}");
            assert_eq!(armed(), None);
        }
        let missed = run("fault.test.elsewhere");
        assert!(missed.status.success(), "{missed:?}");
    }

    #[test]
    fn a_stop_point_pauses_the_process_until_sigcont() {
        use nix::sys::signal::{Signal, kill};
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        use nix::unistd::Pid;
        if armed().is_some() {
            return; // this is the child
        }
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(&exe)
            .args(["--exact", "fault::tests::child_hits_points", "--nocapture"])
            .env(ENV, "stop:fault.test.armed")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        if !ENABLED {
            // Without the feature (`cargo test -p csi-api` alone) the point is compiled out.
            assert!(child.wait().unwrap().success());
            return;
        }
        let stopped = waitpid(pid, Some(WaitPidFlag::WUNTRACED)).unwrap();
        assert!(
            matches!(stopped, WaitStatus::Stopped(_, Signal::SIGSTOP)),
            "{stopped:?}"
        );
        kill(pid, Signal::SIGCONT).unwrap();
        assert!(child.wait().unwrap().success());
    }
}
