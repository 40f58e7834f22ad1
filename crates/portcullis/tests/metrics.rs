//! `/metrics` of the real server: live sessions per application and policy, and every store
//! call timed by operation.

mod common;

use std::time::{Duration, Instant};

use common::{Server, create_key, data_dir};
use serde_json::json;

/// The value of the sample of `metric` whose labels include every one of `labels`
/// (`name="value"`), if the text has one.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(metric)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        let set: Vec<&str> = set.split(',').collect();
        labels
            .iter()
            .all(|l| set.contains(l))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

async fn scrape(server: &Server) -> String {
    let response = server
        .http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Scrapes until the live-session gauge of `application` and `policy` reads `expected` (the
/// count is refreshed every second in these tests, so it may take a moment), and answers the
/// text that showed it.
async fn until_live(server: &Server, application: &str, policy: &str, expected: f64) -> String {
    let app = format!("application=\"{application}\"");
    let policy = format!("policy=\"{policy}\"");
    let started = Instant::now();
    loop {
        let text = scrape(server).await;
        let live = sample(&text, "portcullis_live_sessions", &[&app, &policy]);
        if live == Some(expected) {
            return text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "portcullis_live_sessions{{{app},{policy}}} is {live:?}, not {expected}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn metrics_show_live_sessions_per_application_and_policy_and_store_calls_by_op() {
    let dir = data_dir();
    let config = dir.join("portcullis.toml");
    std::fs::write(
        &config,
        "live_sessions_interval = \"1s\"\n[policies.bank]\npreset = \"aal2\"\n",
    )
    .unwrap();
    let shop = create_key(&dir, "shop");
    let blog = create_key(&dir, "blog");
    let server = Server::start_with(&dir, None, Some(&config)).await;

    let create = |key: String, subject: &'static str, policy: &'static str| {
        let server = &server;
        async move {
            let (status, body) = server
                .call(
                    &key,
                    reqwest::Method::POST,
                    "/v1/sessions",
                    Some(json!({"subject": subject, "policy": policy})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            (
                body["token"].as_str().unwrap().to_owned(),
                body["session"]["application"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (alice, shop_id) = create(shop.clone(), "alice", "default").await;
    create(shop.clone(), "bob", "default").await;
    let (carol, _) = create(shop.clone(), "carol", "bank").await;
    let (_, blog_id) = create(blog.clone(), "dave", "default").await;
    assert_eq!(server.validate(&shop, &alice).await.0, 200);

    until_live(&server, &shop_id, "default", 2.0).await;
    until_live(&server, &shop_id, "bank", 1.0).await;
    let text = until_live(&server, &blog_id, "default", 1.0).await;
    for op in ["insert", "find_by_token", "find_api_key"] {
        let count = sample(
            &text,
            "portcullis_store_call_seconds_count",
            &[&format!("op=\"{op}\"")],
        );
        assert!(
            count.is_some_and(|n| n >= 1.0),
            "no store call timed as {op}:\n{text}"
        );
    }
    assert!(
        text.contains("portcullis_store_call_seconds_bucket{op=\"find_by_token\",le=\"0.00001\"}"),
        "store calls have buckets of their own, from 10 µs:\n{text}"
    );

    // Logging out lowers the count; the last bank session ending brings its pair to 0, not
    // to its old value.
    for token in [&alice, &carol] {
        let (status, _) = server
            .call(
                &shop,
                reqwest::Method::POST,
                "/v1/sessions/logout",
                Some(json!({"token": token})),
            )
            .await;
        assert_eq!(status, 204);
    }
    until_live(&server, &shop_id, "default", 1.0).await;
    let text = until_live(&server, &shop_id, "bank", 0.0).await;
    assert_eq!(
        sample(
            &text,
            "portcullis_store_errors_total",
            &["op=\"live_counts\""]
        ),
        Some(0.0),
        "no count failed (the counter of each operation called is there, at 0)"
    );
    server.stop();
}
