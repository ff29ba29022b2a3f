//! Signature probing: does anything already live on a device? The real probe is
//! [`crate::lvm::blkid`] (`blkid -p`, through the one runner), behind the [`SignatureProbe`]
//! trait so that tests replay captured output.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::lvm::blkid::{ProbeError, Probed};
use crate::lvm::{CommandRunner, LvmRunner, RunnerConfig};

/// Looks at the first and last sectors of a device for anything that lives there.
#[async_trait]
pub trait SignatureProbe: Send + Sync {
    async fn probe(&self, device: &Path) -> Result<Probed, ProbeError>;
}

/// The real probe: util-linux `blkid -p -o export`, run by a [`CommandRunner`].
#[derive(Clone)]
pub struct BlkidProbe {
    runner: Arc<dyn LvmRunner>,
}

impl Default for BlkidProbe {
    fn default() -> Self {
        BlkidProbe::new(Arc::new(CommandRunner::default()))
    }
}

impl std::fmt::Debug for BlkidProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkidProbe").finish_non_exhaustive()
    }
}

impl BlkidProbe {
    /// A probe whose commands `runner` runs.
    pub fn new(runner: Arc<dyn LvmRunner>) -> Self {
        BlkidProbe { runner }
    }

    /// A probe running `program` instead of `blkid` from `PATH`.
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        BlkidProbe::new(Arc::new(CommandRunner::new(RunnerConfig {
            blkid_path: program.into(),
            ..RunnerConfig::default()
        })))
    }
}

#[async_trait]
impl SignatureProbe for BlkidProbe {
    async fn probe(&self, device: &Path) -> Result<Probed, ProbeError> {
        crate::lvm::blkid::probe(self.runner.as_ref(), device, &CancellationToken::new()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unopenable_device_is_an_error_not_blank() {
        let err = BlkidProbe::default()
            .probe(Path::new("/nonexistent/strata-disk"))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Open { .. }), "{err}");
    }

    #[tokio::test]
    async fn real_blkid_on_files() {
        // blkid probes regular files too: a zeroed file is blank, a swap header is found
        if std::process::Command::new("blkid")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("blkid not installed; skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let blank = dir.path().join("blank");
        std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
        let probe = BlkidProbe::default();
        assert_eq!(probe.probe(&blank).await.unwrap(), Probed::Blank);
        // a swap area made by util-linux mkswap
        let swapf = dir.path().join("swap");
        std::fs::write(&swapf, vec![0u8; 1 << 20]).unwrap();
        let made = std::process::Command::new("mkswap")
            .arg(&swapf)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        match probe.probe(&swapf).await.unwrap() {
            Probed::Signature(s) => assert_eq!(s.fs_type(), Some("swap")),
            other => panic!("swap not found: {other:?}"),
        }
        let missing = BlkidProbe::with_program("/nonexistent/blkid")
            .probe(&blank)
            .await
            .unwrap_err();
        assert!(matches!(missing, ProbeError::Run(_)), "{missing}");
    }
}
