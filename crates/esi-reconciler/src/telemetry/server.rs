//! `/metrics`, `/healthz` and `/readyz` over HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// What the server exposes: a metrics encoder and a readiness flag.
#[derive(Clone)]
pub struct Health {
    pub encode: Arc<dyn Fn() -> String + Send + Sync>,
    /// Set once the process has loaded what it needs (the first list of etcd).
    pub ready: Arc<AtomicBool>,
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        (h.encode)(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "initial list of etcd not loaded yet\n",
        )
    }
}

/// A running server; [`Serving::stop`] ends it gracefully.
pub struct Serving {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    /// Stops accepting, finishes requests in flight and waits for the end.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Binds `addr` and serves until [`Serving::stop`].
pub async fn serve(addr: SocketAddr, health: Health) -> std::io::Result<Serving> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    Ok(Serving {
        addr: bound,
        stop,
        task,
    })
}

pub fn is_ready(ready: &AtomicBool) -> bool {
    ready.load(Ordering::Relaxed)
}
