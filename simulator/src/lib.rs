//! Reference HTTP source for orders_sync.
//!
//! Serves deterministic per-store order data over the wire contract of docs/design.md#sources, plus a control
//! API (late rows, deletions, changes, fault injection, request log) and a truth API that tests
//! compare the database against. See `http.rs` for the routes.

pub mod control;
pub mod data;
pub mod http;
pub mod shapes;
pub mod token;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub use control::{App, Settings};

/// Accept connections until `shutdown` completes. Each connection is its own task, so a
/// request sleeping in a `timeout` fault never holds up the others.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning on the error.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Pages are written in one go; Nagle would only add latency to small responses.
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(http::handle(req, app).await) }
            });
            // Errors here are clients hanging up mid-response (e.g. on a `huge` body): normal.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
