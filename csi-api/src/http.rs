//! The one hardened HTTP server of the three binaries (the scheduler extender, and every
//! `/metrics` endpoint): [`serve`] runs an axum [`Router`] on a TCP listener with limits that a
//! hostile or broken client cannot get past ([`Limits`]):
//! - at most `max_connections` open connections; one more is accepted and closed at once, so that
//!   the kernel's backlog never fills with connections nobody serves;
//! - request headers within `header_read_timeout` and `max_header_bytes` (hyper closes the
//!   connection, or answers 431), which also closes a keep-alive connection idle for that long;
//! - no byte in either direction for `idle_timeout`: the connection is closed;
//! - the body within `max_body_bytes` (413 from the `Content-Length` alone, before any byte is
//!   read; a chunked body is cut off at the limit), and the whole request read and answered
//!   within `request_timeout` (408), so a body sent one byte at a time cannot hold a slot;
//! - at most `body_budget_bytes` of request bodies buffered at once over all connections: a
//!   request that would exceed it gets 503 with `Retry-After`, so memory stays bounded whatever
//!   the number of connections.
//!
//! HTTP/1.1 only (kube-scheduler and Prometheus speak it).

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

/// The content type of the OpenMetrics text that `prometheus-client` encodes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long in-flight requests may finish after shutdown is asked.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The limits of one server; see the module head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers); at least 8 KiB.
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub body_budget_bytes: usize,
}

impl Limits {
    /// For `/metrics`: GET only (no body), one or two scrapers.
    pub const METRICS: Limits = Limits {
        max_body_bytes: 4 << 10,
        max_header_bytes: 16 << 10,
        header_read_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        max_connections: 32,
        body_budget_bytes: 64 << 10,
    };
}

/// A `/metrics` router answering `encode()` as OpenMetrics text.
pub fn metrics_router<F>(encode: F) -> Router
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = encode();
            async move { ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body) }
        }),
    )
}

/// Serves `/metrics` (see [`metrics_router`]) on `listener` with [`Limits::METRICS`] until
/// `shutdown`.
pub async fn serve_metrics<F>(
    listener: TcpListener,
    encode: F,
    shutdown: CancellationToken,
) -> io::Result<()>
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    serve(listener, metrics_router(encode), Limits::METRICS, shutdown).await
}

/// Serves `app` on `listener` within `limits` until `shutdown`; in-flight requests then get a
/// few seconds to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let app = harden(app, &limits);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8 << 10))
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!("connection limit reached; closing a new connection");
            drop(stream);
            continue;
        };
        let io = TokioIo::new(IdleTimeout::new(stream, limits.idle_timeout));
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
    Ok(())
}

/// `app` with the body limit, the shared body budget and the request timeout.
fn harden(app: Router, limits: &Limits) -> Router {
    let budget = Arc::new(Semaphore::new(limits.body_budget_bytes));
    app.layer(axum::middleware::from_fn(move |request, next| {
        within_budget(budget.clone(), request, next)
    }))
    .layer(DefaultBodyLimit::disable())
    .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
    .layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ))
}

/// Runs the request with its body drawing on `budget` as bytes arrive; the bytes stay counted
/// until the response is ready. A body the budget cannot hold turns the answer into a 503.
async fn within_budget(budget: Arc<Semaphore>, request: Request, next: Next) -> Response {
    let held = Arc::new(Held::default());
    let request = request.map(|body| {
        Body::new(Budgeted {
            inner: body,
            budget,
            held: held.clone(),
        })
    });
    let response = next.run(request).await;
    if held.exhausted.load(Ordering::Relaxed) {
        let mut busy = (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many request bytes in flight; retry shortly",
        )
            .into_response();
        busy.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return busy;
    }
    response
}

#[derive(Default)]
struct Held {
    permits: Mutex<Option<OwnedSemaphorePermit>>,
    exhausted: AtomicBool,
}

/// A request body that takes a permit per byte from the shared budget before handing the bytes
/// on.
struct Budgeted {
    inner: Body,
    budget: Arc<Semaphore>,
    held: Arc<Held>,
}

/// The shared request-body budget is spent.
#[derive(Debug, thiserror::Error)]
#[error("too many request bytes in flight")]
struct BudgetExhausted;

impl HttpBody for Budgeted {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref))
            && let Some(data) = data
            && !data.is_empty()
        {
            let permit = u32::try_from(data.len())
                .ok()
                .and_then(|n| self.budget.clone().try_acquire_many_owned(n).ok());
            let Some(permit) = permit else {
                self.held.exhausted.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(BudgetExhausted.into())));
            };
            let mut held = self
                .held
                .permits
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match held.as_mut() {
                Some(all) => all.merge(permit),
                None => *held = Some(permit),
            }
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection that fails with `TimedOut` when no byte moved either way for `idle`.
struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn moved(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for too long",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                self.check(cx)?;
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                self.check(cx)?;
                Poll::Pending
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    const LIMITS: Limits = Limits {
        max_body_bytes: 64 << 10,
        max_header_bytes: 8 << 10,
        header_read_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(600),
        idle_timeout: Duration::from_secs(2),
        max_connections: 4,
        body_budget_bytes: 96 << 10,
    };

    /// A server with `/echo` (answers the body's length) and `/metrics`.
    async fn start(limits: Limits) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let app = metrics_router(|| "# EOF\n".to_owned()).route(
            "/echo",
            axum::routing::post(|body: Bytes| async move { body.len().to_string() }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move { serve(listener, app, limits, stop).await.unwrap() }
        });
        (addr, stop, task)
    }

    /// Reads until the peer closes (or `within` passes): what was read and whether it closed.
    async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (String, bool) {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into(), true),
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => return (String::from_utf8_lossy(&out).into(), false),
            }
        }
    }

    async fn request(addr: SocketAddr, raw: &[u8]) -> (String, bool) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw).await.unwrap();
        read_to_close(&mut stream, Duration::from_secs(5)).await
    }

    fn post(len: usize) -> Vec<u8> {
        let mut raw = format!(
            "POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {len}\r\n\r\n"
        )
        .into_bytes();
        raw.extend(std::iter::repeat_n(b'a', len));
        raw
    }

    #[tokio::test]
    async fn legit_requests_are_served_with_the_openmetrics_type() {
        let (addr, stop, task) = start(LIMITS).await;
        let (answer, _) = request(
            addr,
            b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains(&format!("content-type: {OPENMETRICS_CONTENT_TYPE}")),
            "{answer}"
        );
        let (answer, _) = request(addr, &post(1000)).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("1000"),
            "{answer}"
        );
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn an_oversize_body_is_refused_from_its_length_without_reading_it() {
        let (addr, stop, task) = start(LIMITS).await;
        // Declares 64 MiB and sends none of it: the answer comes anyway, at once.
        let started = Instant::now();
        let (answer, _) = request(
            addr,
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 67108864\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(started.elapsed() < Duration::from_millis(250));
        // A chunked body is cut off at the limit.
        let mut raw = b"POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..80 {
            raw.extend_from_slice(b"400\r\n");
            raw.extend(std::iter::repeat_n(b'a', 1024));
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        let (answer, _) = request(addr, &raw).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        // Within the limit still served.
        let (answer, _) = request(addr, &post(LIMITS.max_body_bytes)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn slow_headers_and_slow_bodies_are_closed() {
        let (addr, stop, task) = start(LIMITS).await;
        // Headers never finished.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let (_, closed) = read_to_close(&mut slow, Duration::from_secs(3)).await;
        assert!(closed, "a connection with unfinished headers stays open");
        assert!(started.elapsed() < Duration::from_secs(1));
        // A body that stalls: 408 by the request deadline, then closed.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nabc")
            .await
            .unwrap();
        let started = Instant::now();
        let (answer, closed) = read_to_close(&mut slow, Duration::from_secs(3)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(closed);
        assert!(started.elapsed() < Duration::from_millis(1500));
        // A body sent a byte at a time, each in time, is still cut at the request deadline.
        let mut drip = TcpStream::connect(addr).await.unwrap();
        drip.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let mut answered = String::new();
        for _ in 0..40 {
            if drip.write_all(b"a").await.is_err() {
                break;
            }
            let mut buf = [0u8; 256];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(50), drip.read(&mut buf)).await
            {
                answered = String::from_utf8_lossy(&buf[..n]).into();
                break;
            }
        }
        assert!(answered.starts_with("HTTP/1.1 408"), "{answered:?}");
        assert!(started.elapsed() < Duration::from_millis(1500));
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_and_slots_come_back() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            ..LIMITS
        };
        let (addr, stop, task) = start(limits).await;
        let mut held = Vec::new();
        for _ in 0..limits.max_connections {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            held.push(s); // kept alive
        }
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let (answer, closed) = read_to_close(&mut extra, Duration::from_secs(2)).await;
        assert!(closed && answer.is_empty(), "{answer}");
        held.clear();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (answer, _) = request(
            addr,
            b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn idle_keep_alive_connections_are_closed() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_millis(400),
            request_timeout: Duration::from_millis(300),
            ..LIMITS
        };
        let (addr, stop, task) = start(limits).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let (answer, closed) = read_to_close(&mut s, Duration::from_secs(3)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(closed);
        assert!(started.elapsed() < Duration::from_secs(2));
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn bodies_past_the_shared_budget_get_503() {
        let limits = Limits {
            body_budget_bytes: 16 << 10,
            ..LIMITS
        };
        let (addr, stop, task) = start(limits).await;
        // One slow request holds 12 KiB of the 16 KiB budget...
        let mut holder = TcpStream::connect(addr).await.unwrap();
        let mut raw = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 20000\r\n\r\n".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 12 << 10));
        holder.write_all(&raw).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ...so another 8 KiB body does not fit now.
        let (answer, _) = request(addr, &post(8 << 10)).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("retry-after: 1"), "{answer}");
        // A small one still does.
        let (answer, _) = request(addr, &post(1 << 10)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Once the holder is cut off by the request deadline, its bytes are released.
        let (answer, _) = read_to_close(&mut holder, Duration::from_secs(3)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        let (answer, _) = request(addr, &post(8 << 10)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        stop.cancel();
        task.await.unwrap();
    }
}
