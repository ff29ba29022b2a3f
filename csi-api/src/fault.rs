//! Crash points for the crash-consistency tests (`tests/e2e/`). The agent and the controller call
//! [`point`] with a name at each step of create, expand and delete; when the environment variable
//! `STRATA_FAULT_POINT` equals that name, the process aborts on the spot (`std::process::abort`:
//! no destructors, no graceful shutdown, as with `kill -9`), so that a test can restart it and
//! check that the system converges. Otherwise a call costs one comparison: the variable is read
//! once per process and cached.

use std::sync::OnceLock;

/// The variable naming the point at which the process aborts.
pub const ENV: &str = "STRATA_FAULT_POINT";

static ARMED: OnceLock<Option<String>> = OnceLock::new();

/// The point this process aborts at, if any.
pub fn armed() -> Option<&'static str> {
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

/// Aborts the process if `STRATA_FAULT_POINT` is `name`; does nothing otherwise.
pub fn point(name: &str) {
    if armed() == Some(name) {
        eprintln!("{ENV}={name}: fault point reached, aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    /// Run as a child by `an_armed_point_aborts_the_process`; does nothing in a normal run.
    #[test]
    fn child_hits_points() {
        point("fault.test.other");
        point("fault.test.armed");
    }

    #[test]
    fn an_armed_point_aborts_the_process() {
        if armed().is_some() {
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
        assert_eq!(hit.status.signal(), Some(6), "expected SIGABRT: {hit:?}");
        assert!(String::from_utf8_lossy(&hit.stderr).contains("fault.test.armed"));
        let missed = run("fault.test.elsewhere");
        assert!(missed.status.success(), "{missed:?}");
    }
}
