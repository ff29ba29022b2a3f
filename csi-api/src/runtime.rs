//! What every Strata binary does the same way: logging setup, the shutdown signal, and the CSI
//! endpoint (`unix://` socket, stale file removed, mode 0660).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging flags shared by the three binaries.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "STRATA_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,
    /// Log filter in `tracing` EnvFilter syntax (e.g. `info,csi_agent=debug`); without it,
    /// `RUST_LOG`, else `info`.
    #[arg(long, env = "STRATA_LOG", global = true)]
    pub log_level: Option<String>,
}

/// The log filter: `--log-level` or `STRATA_LOG` when given, else `RUST_LOG` when set and not
/// empty, else `info`.
pub fn log_filter(flag: Option<&str>, rust_log: Option<&str>) -> String {
    flag.or(rust_log.filter(|f| !f.trim().is_empty()))
        .unwrap_or("info")
        .to_owned()
}

/// Installs the global tracing subscriber; logs go to stderr. The filter is [`log_filter`]'s; an
/// invalid one falls back to `info`.
pub fn init_logging(args: &LogArgs) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let wanted = log_filter(args.log_level.as_deref(), rust_log.as_deref());
    let filter = EnvFilter::try_new(&wanted).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_token() -> io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
        cancel.cancel();
    });
    Ok(token)
}

/// Where a gRPC server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

/// An endpoint string that is neither `unix:///abs/path` nor `tcp://host:port`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid endpoint {0:?}: expected unix:///absolute/path or tcp://host:port")]
pub struct InvalidEndpoint(pub String);

impl std::str::FromStr for Endpoint {
    type Err = InvalidEndpoint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidEndpoint(s.to_owned());
        if let Some(path) = s.strip_prefix("unix://") {
            let path = Path::new(path);
            if !path.is_absolute() || path.file_name().is_none() {
                return Err(invalid());
            }
            Ok(Endpoint::Unix(path.to_path_buf()))
        } else if let Some(addr) = s.strip_prefix("tcp://") {
            if addr.is_empty() || !addr.contains(':') {
                return Err(invalid());
            }
            Ok(Endpoint::Tcp(addr.to_owned()))
        } else if s.starts_with('/') {
            Ok(Endpoint::Unix(PathBuf::from(s)))
        } else {
            Err(invalid())
        }
    }
}

/// Binds a unix socket at `path`: removes a stale socket (never any other kind of file), creates
/// the parent folder, and restricts the socket to owner and group (0660).
pub fn bind_unix(path: &Path) -> io::Result<UnixListenerStream> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(UnixListenerStream::new(listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_filter_is_the_flag_or_strata_log_then_rust_log_then_info() {
        // Neither `--log-level` nor STRATA_LOG: RUST_LOG decides.
        assert_eq!(log_filter(None, Some("warn")), "warn");
        assert_eq!(log_filter(None, None), "info");
        assert_eq!(log_filter(None, Some(" ")), "info");
        // Either given: it wins over RUST_LOG.
        assert_eq!(log_filter(Some("debug"), Some("warn")), "debug");
        assert_eq!(log_filter(Some("error"), None), "error");
    }

    #[test]
    fn the_flag_and_strata_log_count_as_given_and_nothing_else_does() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            log: LogArgs,
        }
        use clap::Parser;
        let level = |args: &[&str]| Cli::try_parse_from(args).unwrap().log.log_level;
        assert_eq!(level(&["x", "--log-level", "debug"]), Some("debug".into()));
        // STRATA_LOG is read by clap (`env`): not set in the test environment
        if std::env::var_os("STRATA_LOG").is_none() {
            assert_eq!(level(&["x"]), None);
        }
    }

    #[test]
    fn endpoints_parse_unix_and_tcp_only() {
        assert_eq!(
            "unix:///run/csi/csi.sock".parse(),
            Ok(Endpoint::Unix("/run/csi/csi.sock".into()))
        );
        assert_eq!(
            "tcp://127.0.0.1:10000".parse(),
            Ok(Endpoint::Tcp("127.0.0.1:10000".into()))
        );
        assert!("unix://relative.sock".parse::<Endpoint>().is_err());
        assert!("http://x:1".parse::<Endpoint>().is_err());
        assert!("tcp://".parse::<Endpoint>().is_err());
    }

    #[tokio::test]
    async fn bind_replaces_a_stale_socket_but_never_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("csi.sock");
        drop(bind_unix(&sock).unwrap());
        let listener = bind_unix(&sock).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(listener);

        let file = dir.path().join("data");
        std::fs::write(&file, b"keep").unwrap();
        assert!(bind_unix(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }
}
