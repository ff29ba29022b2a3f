//! A recording, scripted [`LvmRunner`] for unit tests of this layer and of its callers (claim,
//! CSI services). Two modes: a *script* (expected commands in order, each with its reply; a call
//! that does not match the next expectation fails loudly) or a *handler* closure (for concurrent
//! tests where order is not fixed). Every call is recorded; the highest number of calls in flight
//! at once is tracked, so tests can prove serialisation.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::error::{LvmError, Result};
use super::runner::{Invocation, LvmRunner, Output, Tool};

/// The fake's answer to one command.
#[derive(Debug, Clone)]
pub struct Reply {
    pub output: Output,
    /// How long the "command" takes (to exercise concurrency, timeouts, cancellation).
    pub delay: Duration,
}

impl Reply {
    /// Exit 0 with this stdout.
    pub fn ok(stdout: impl Into<String>) -> Self {
        Reply {
            output: Output::ok(stdout),
            delay: Duration::ZERO,
        }
    }

    /// Exit `code` with this stderr.
    pub fn fail(code: i32, stderr: impl Into<String>) -> Self {
        Reply {
            output: Output::failed(code, stderr),
            delay: Duration::ZERO,
        }
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// One expected command: the tool and the leading arguments it must start with; further
/// arguments must all appear somewhere in the call (`contains`).
#[derive(Debug, Clone)]
pub struct Expect {
    pub tool: Tool,
    pub prefix: Vec<String>,
    pub contains: Vec<String>,
    pub reply: Reply,
}

type Handler = dyn Fn(&Invocation) -> Reply + Send + Sync;

enum Mode {
    Script(Mutex<VecDeque<Expect>>),
    Handler(Box<Handler>),
}

/// See the module documentation.
pub struct FakeRunner {
    mode: Mode,
    calls: Mutex<Vec<Invocation>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl FakeRunner {
    /// A runner that expects exactly the scripted commands, in order (see [`FakeRunner::expect`]).
    pub fn scripted() -> Self {
        FakeRunner::with_mode(Mode::Script(Mutex::new(VecDeque::new())))
    }

    /// A runner that answers every command with `handler`.
    pub fn from_fn(handler: impl Fn(&Invocation) -> Reply + Send + Sync + 'static) -> Self {
        FakeRunner::with_mode(Mode::Handler(Box::new(handler)))
    }

    fn with_mode(mode: Mode) -> Self {
        FakeRunner {
            mode,
            calls: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        }
    }

    /// Scripts the next lvm2 command: it must start with `prefix` (subcommand first, e.g.
    /// `["lvcreate"]`) and contain every argument of `contains`.
    pub fn expect(self, prefix: &[&str], contains: &[&str], reply: Reply) -> Self {
        self.expect_tool(Tool::Lvm, prefix, contains, reply)
    }

    /// Like [`FakeRunner::expect`] for another tool.
    pub fn expect_tool(self, tool: Tool, prefix: &[&str], contains: &[&str], reply: Reply) -> Self {
        match &self.mode {
            Mode::Script(queue) => queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push_back(Expect {
                    tool,
                    prefix: prefix.iter().map(|s| s.to_string()).collect(),
                    contains: contains.iter().map(|s| s.to_string()).collect(),
                    reply,
                }),
            Mode::Handler(_) => panic!("expect() on a handler-mode FakeRunner"),
        }
        self
    }

    /// Every command run so far, in order.
    pub fn calls(&self) -> Vec<Invocation> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The commands run so far whose lvm2 subcommand is `sub`.
    pub fn calls_of(&self, sub: &str) -> Vec<Invocation> {
        self.calls()
            .into_iter()
            .filter(|c| c.subcommand() == sub)
            .collect()
    }

    /// Highest number of commands that were running at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Panics if scripted commands were never called.
    pub fn assert_done(&self) {
        if let Mode::Script(queue) = &self.mode {
            let left = queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            assert!(
                left.is_empty(),
                "expected commands never ran: {:?}",
                left.iter().map(|e| &e.prefix).collect::<Vec<_>>()
            );
        }
    }

    fn reply_for(&self, inv: &Invocation) -> Result<Reply> {
        match &self.mode {
            Mode::Handler(handler) => Ok(handler(inv)),
            Mode::Script(queue) => {
                let next = queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop_front();
                let Some(exp) = next else {
                    return Err(unexpected(inv, "no more commands were scripted"));
                };
                let matches = exp.tool == inv.tool
                    && inv.args.len() >= exp.prefix.len()
                    && inv.args.iter().zip(&exp.prefix).all(|(a, p)| a == p)
                    && exp.contains.iter().all(|c| inv.args.contains(c));
                if matches {
                    Ok(exp.reply)
                } else {
                    Err(unexpected(
                        inv,
                        &format!(
                            "expected {} {:?} containing {:?}",
                            exp.tool.as_str(),
                            exp.prefix,
                            exp.contains
                        ),
                    ))
                }
            }
        }
    }
}

fn unexpected(inv: &Invocation, why: &str) -> LvmError {
    LvmError::Parse {
        command: inv.display(),
        detail: format!("FakeRunner: unexpected command ({why})"),
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl LvmRunner for FakeRunner {
    async fn run(&self, inv: &Invocation, cancel: &CancellationToken) -> Result<Output> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(inv.clone());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _guard = InFlight(&self.in_flight);
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let reply = self.reply_for(inv)?;
        if !reply.delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(reply.delay) => {}
                _ = cancel.cancelled() => {
                    return Err(LvmError::Cancelled { command: inv.display() });
                }
            }
        }
        Ok(reply.output)
    }

    /// Every device opens: scripted commands stand in for devices that do not exist.
    async fn check_readable(&self, _device: &Path) -> std::io::Result<()> {
        Ok(())
    }
}
