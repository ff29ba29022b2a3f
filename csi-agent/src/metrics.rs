//! The agent's Prometheus metrics (`prometheus-client`), served as OpenMetrics text on `/metrics`
//! (the hardened `csi_api::http` server) at
//! `--metrics-addr` in both modes: bytes wiped and wipe durations by method and device class,
//! LVs whose wipe is pending (marked and not yet removed), and fstrim runs. One registry per
//! process, handed to the parts that count; cheap to clone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WipeLabels {
    method: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// See the module head.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    wiped_bytes: Family<WipeLabels, Counter>,
    wipe_seconds: Family<WipeLabels, Histogram>,
    /// LVs marked for wiping and not removed yet.
    pub wipes_pending: Gauge,
    fstrim_runs: Family<OutcomeLabels, Counter>,
    /// Bytes the last fstrim pass reported trimmed (sum over volumes).
    pub fstrim_last_bytes: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("strata_agent");
        let wiped_bytes = Family::<WipeLabels, Counter>::default();
        // 0.1 s .. ~1.8 h: a discard of a small LV to zeroing a large one on a spinning disk.
        let wipe_seconds = Family::<WipeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.1, 2.0, 17))
        });
        let wipes_pending = Gauge::default();
        let fstrim_runs = Family::<OutcomeLabels, Counter>::default();
        let fstrim_last_bytes = Gauge::default();
        registry.register(
            "wiped_bytes",
            "Bytes of deleted volumes wiped, by method and device class",
            wiped_bytes.clone(),
        );
        registry.register(
            "wipe_duration_seconds",
            "Time to wipe one deleted volume, by method and device class",
            wipe_seconds.clone(),
        );
        registry.register(
            "wipes_pending",
            "Volumes marked for wiping and not removed yet (their space is not free)",
            wipes_pending.clone(),
        );
        registry.register(
            "fstrim_runs",
            "fstrim runs on mounted volumes, by outcome",
            fstrim_runs.clone(),
        );
        registry.register(
            "fstrim_last_trimmed_bytes",
            "Bytes the last periodic fstrim pass reported trimmed",
            fstrim_last_bytes.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            wiped_bytes,
            wipe_seconds,
            wipes_pending,
            fstrim_runs,
            fstrim_last_bytes,
        }
    }

    /// One finished wipe.
    pub fn wiped(&self, method: &str, class: &str, bytes: u64, took: Duration) {
        let labels = WipeLabels {
            method: method.into(),
            class: class.into(),
        };
        self.wiped_bytes.get_or_create(&labels).inc_by(bytes);
        self.wipe_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// One fstrim run (`ok` or `failed`).
    pub fn fstrim_run(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.fstrim_runs
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Serves `/metrics` on `addr` until `shutdown`.
    pub async fn serve(self, addr: SocketAddr, shutdown: CancellationToken) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        self.serve_on(listener, shutdown).await
    }

    /// Serves `/metrics` on a bound listener until `shutdown`.
    pub async fn serve_on(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        csi_api::http::serve_metrics(listener, move || self.encode(), shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_the_wipe_metrics_over_http() {
        let m = Metrics::new();
        m.wiped("zero", "hdd", 4 << 20, Duration::from_millis(300));
        m.wipes_pending.set(2);
        m.fstrim_run(true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(m.clone().serve_on(listener, stop.clone()));
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        conn.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(
            body.contains(csi_api::http::OPENMETRICS_CONTENT_TYPE),
            "{body}"
        );
        assert!(
            body.contains(r#"strata_agent_wiped_bytes_total{method="zero",class="hdd"} 4194304"#),
            "{body}"
        );
        assert!(body.contains("strata_agent_wipes_pending 2"), "{body}");
        assert!(
            body.contains(
                r#"strata_agent_wipe_duration_seconds_count{method="zero",class="hdd"} 1"#
            ),
            "{body}"
        );
        assert!(
            body.contains(r#"strata_agent_fstrim_runs_total{outcome="ok"} 1"#),
            "{body}"
        );
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
