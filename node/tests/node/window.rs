//! The chat window's door: assets under a strict CSP, a one-time link exchanged for a session
//! cookie, and browser writes that must come from the window itself. Through the real binary.

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

use crate::binaries::{Daemon, files_containing, rendezvous};
use peerchat::driving::ui::{CSP, UiLink};

/// A client that does not follow redirects and sends no token.
fn browser() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(peerchat_pki::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

async fn link(daemon: &Daemon) -> String {
    let (http, base, token) = daemon.api();
    let link: UiLink = http
        .post(format!("{base}/api/v1/ui/link"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    format!("{base}{}", link.path)
}

async fn error_code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_opens_with_a_one_time_link_and_refuses_cross_site_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let url = rendezvous(&tmp.path().join("rendezvous")).await;
    let alice = Daemon::start(&tmp.path().join("alice"), &url);
    let (_, base, token) = alice.api();
    let port = base.rsplit(':').next().unwrap().to_owned();
    let client = browser();

    // The assets need no session and come with the security headers.
    let page = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()[header::CONTENT_SECURITY_POLICY], CSP);
    assert!(CSP.contains("script-src 'self'") && !CSP.contains("unsafe-inline"));
    assert_eq!(page.headers()[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(page.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script src="/ui/app.js" defer></script>"#));
    assert!(!html.contains("<script>"), "no inline script");
    let script = client
        .get(format!("{base}/ui/app.js"))
        .send()
        .await
        .unwrap();
    assert!(
        script.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );

    // Without a session or the token, the API is closed.
    let closed = client
        .get(format!("{base}/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(closed).await,
        (StatusCode::UNAUTHORIZED, "bad_token".into())
    );

    // The link becomes a cookie, once, and leaves the code behind.
    let link = link(&alice).await;
    let opened = client.get(&link).send().await.unwrap();
    assert_eq!(opened.status(), StatusCode::SEE_OTHER);
    assert_eq!(opened.headers()[header::LOCATION], "/");
    let set_cookie = opened.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    let expected_name = format!("peerchat_session_{port}=");
    assert!(set_cookie.starts_with(&expected_name), "{set_cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(flag), "{set_cookie} lacks {flag}");
    }
    assert!(
        !set_cookie.contains(&token),
        "the cookie is not the API token"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let reused = client.get(&link).send().await.unwrap();
    assert_eq!(reused.status(), StatusCode::FORBIDDEN);
    let forged = client
        .get(format!("{base}/ui/open?code={}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);

    let with_cookie = |method: Method, path: &str, extra: &[(&'static str, String)]| {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        for (name, value) in extra {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        client
            .request(method, format!("{base}{path}"))
            .headers(headers)
            .json(&serde_json::json!({ "username": "nobody-here" }))
            .send()
    };

    // The session reads.
    let status = with_cookie(Method::GET, "/api/v1/status", &[])
        .await
        .unwrap();
    assert_eq!(status.status(), StatusCode::OK);

    // Writes need the CSRF header, and an Origin (when sent) of this very host.
    let no_header = with_cookie(Method::POST, "/api/v1/contacts", &[])
        .await
        .unwrap();
    assert_eq!(
        error_code(no_header).await,
        (StatusCode::FORBIDDEN, "cross_site".into())
    );
    let other_origin = with_cookie(
        Method::POST,
        "/api/v1/contacts",
        &[
            ("x-peerchat-csrf", "1".into()),
            ("origin", "http://evil.example".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        error_code(other_origin).await,
        (StatusCode::FORBIDDEN, "cross_site".into())
    );
    let same_origin = with_cookie(
        Method::POST,
        "/api/v1/contacts",
        &[("x-peerchat-csrf", "1".into()), ("origin", base.clone())],
    )
    .await
    .unwrap();
    // Through the guard: the node itself answers (not registered yet).
    assert_eq!(
        error_code(same_origin).await,
        (StatusCode::CONFLICT, "not_registered".into())
    );

    // A window cannot mint links into itself or another window.
    let minted = with_cookie(
        Method::POST,
        "/api/v1/ui/link",
        &[("x-peerchat-csrf", "1".into()), ("origin", base.clone())],
    )
    .await
    .unwrap();
    assert_eq!(
        error_code(minted).await,
        (StatusCode::UNAUTHORIZED, "bad_token".into())
    );

    // DNS rebinding: a foreign Host gets nothing, cookie or not.
    let rebound = with_cookie(
        Method::GET,
        "/api/v1/status",
        &[("host", "evil.example".into())],
    )
    .await
    .unwrap();
    assert_eq!(
        error_code(rebound).await,
        (StatusCode::FORBIDDEN, "bad_host".into())
    );

    // The data directory keeps a hash of the session, never the cookie itself.
    let session = cookie.split('=').nth(1).unwrap();
    assert!(files_containing(&tmp.path().join("alice"), session.as_bytes()).is_empty());
    assert!(tmp.path().join("alice").join("ui-sessions").exists());
}
