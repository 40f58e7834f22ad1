//! The bare exchange: the ceiling for a validation's request and answer with nothing behind them.
//!
//! `exchange --port P --answer FILE` answers `POST /v1/sessions/validate` with the bytes of FILE
//! (what Portcullis answered to the same request; `bench/run.sh` saves it) as
//! `application/json` with `cache-control: no-store`, after reading the whole request body. No
//! key check, no lookup, no JSON. The "ok" ceiling answers two bytes to a bodiless `GET`; this
//! one carries what a validation must carry, so Portcullis ÷ this is what its own work costs.

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::post;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = 3010u16;
    let mut answer = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().ok_or("--port needs a value")?.parse()?,
            "--answer" => {
                answer = Some(std::fs::read(args.next().ok_or("--answer needs a file")?)?)
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let answer = Bytes::from(answer.ok_or("usage: exchange --port P --answer FILE")?);
    let router = Router::new().route(
        "/v1/sessions/validate",
        post(move |_request: Bytes| {
            let answer = answer.clone();
            async move {
                (
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::CACHE_CONTROL, "no-store"),
                    ],
                    answer,
                )
            }
        }),
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            axum::serve(listener, router).await
        })?;
    Ok(())
}
