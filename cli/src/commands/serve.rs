//! `pgcairn serve --listen ADDR`: `/metrics` (what `pgcairn metrics` prints, one collection
//! per scrape) and `/healthz` over plain HTTP/1.1 (hyper).
//!
//! Scrapes are serialised: one collection at a time, so a Prometheus pair scraping together
//! never doubles the repository reads. Bind to loopback (the default) or put a TLS proxy in
//! front: the metrics say nothing secret, but the endpoint has no authentication.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use super::metrics::{render, Collector};
use crate::exit::{ExitCode, Failure};
use crate::settings::Settings;

/// The classic Prometheus text format (see [`super::metrics::to_text_format`]).
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

async fn answer(
    collector: Arc<Mutex<Collector>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ));
    }
    let response = match req.uri().path() {
        "/metrics" => {
            let inputs = collector.lock().await.collect().await;
            reply(StatusCode::OK, CONTENT_TYPE, render(&inputs))
        }
        "/healthz" => {
            let inputs = collector.lock().await.collect().await;
            match inputs.down_reason() {
                None => reply(StatusCode::OK, "text/plain", "ok\n".into()),
                Some(r) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("repository cannot be read: {r}\n"),
                ),
            }
        }
        "/" => reply(
            StatusCode::OK,
            "text/html",
            "<html><body><h1>pgcairn</h1><p><a href=\"/metrics\">/metrics</a> <a href=\"/healthz\">/healthz</a></p></body></html>\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    Ok(response)
}

/// Serves until SIGTERM or SIGINT.
pub async fn run(settings: &Settings, listen: &str) -> Result<(), Failure> {
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        Failure::usage(format!(
            "cannot listen on {listen:?} (--listen / PGCAIRN_METRICS_LISTEN): {e}"
        ))
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::new(ExitCode::Failed, format!("listening socket: {e}")))?;
    eprintln!("pgcairn: serving metrics on http://{addr}/metrics");
    let collector = Arc::new(Mutex::new(Collector::new(settings.clone())));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::new(ExitCode::Failed, format!("installing SIGTERM handler: {e}")))?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accepting a metrics connection: {e}");
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        };
        let collector = collector.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(collector.clone(), req));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}
