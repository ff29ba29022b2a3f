//! `fake-apiserver`: the in-memory Kubernetes API stand-in of `strata_tests::apiserver` as a
//! process, for multi-process tests. Prints `listening on http://ADDR` on stdout once ready,
//! optionally writes a kubeconfig and seeds objects from YAML/JSON files, and serves until
//! SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use strata_tests::apiserver::FakeApiServer;

#[derive(Debug, Parser)]
#[command(about = "In-memory Kubernetes API server stand-in for Strata's tests")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig pointing at this server to this path.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Default namespace of the written kubeconfig.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Objects to store before serving (YAML with `---` documents, or JSON); repeatable.
    #[arg(long)]
    seed: Vec<PathBuf>,
    /// Watch events kept for resuming watches.
    #[arg(long, default_value_t = 1000)]
    history: usize,
    /// Milliseconds between BOOKMARK events on watches that allow them.
    #[arg(long, default_value_t = 1000)]
    bookmark_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let server = FakeApiServer::builder()
        .listen(args.listen)
        .history(args.history)
        .bookmark_interval(Duration::from_millis(args.bookmark_ms.max(1)))
        .start()
        .await
        .context("starting the fake API server")?;
    for path in &args.seed {
        let n = server
            .seed_file(path)
            .with_context(|| format!("seeding {}", path.display()))?;
        tracing::info!(file = %path.display(), objects = n, "seeded");
    }
    if let Some(path) = &args.kubeconfig {
        server
            .write_kubeconfig(path, &args.namespace)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("listening on {}", server.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
    }
    server.shutdown().await;
    Ok(())
}
