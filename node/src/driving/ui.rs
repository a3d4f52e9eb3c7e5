//! The chat window: static assets embedded in the binary, served by the local API next to it,
//! and the browser's authentication.
//!
//! The browser never sees the API token. `peerchat ui` asks the API (with the token) for a
//! one-time link; opening it exchanges the code for a session cookie (`HttpOnly`,
//! `SameSite=Strict`) and redirects to `/`, so no secret stays in the address bar or the
//! history. Requests that change something must also carry the `X-Peerchat-CSRF` header (which a
//! cross-site form cannot send) and, when the browser sends one, an `Origin` of this very host.
//! Every response carries a strict Content-Security-Policy: no inline script, nothing from
//! elsewhere.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long a one-time link can be used.
pub const LINK_TTL: Duration = Duration::from_secs(300);
/// Most unused one-time links at once (the oldest stops working past it).
const MAX_CODES: usize = 16;
/// Most browser sessions kept at once (the oldest are dropped past it).
const MAX_SESSIONS: usize = 64;
/// The header state-changing browser requests must carry.
pub const CSRF_HEADER: &str = "x-peerchat-csrf";

/// The Content-Security-Policy of every response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The policy of a file served to the window: nothing runs, nothing loads, whatever it is.
pub const FILE_CSP: &str = "default-src 'none'; sandbox";

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

/// `POST /api/v1/ui/link`: a one-time link to open the window.
#[derive(Debug, Serialize, Deserialize)]
pub struct UiLink {
    /// Path and query to open on the API's address (`/ui/open?code=…`).
    pub path: String,
}

/// One-time codes and the browser sessions they became. Sessions are kept as SHA-256 hashes,
/// in a file (mode 0600) when there is one, so an open window survives a restart of the node.
#[derive(Default)]
pub struct Sessions {
    codes: Mutex<HashMap<String, Instant>>,
    sessions: Mutex<Vec<String>>,
    file: Option<PathBuf>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(<redacted>)")
    }
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Sessions {
    /// Sessions kept in `file` (read now if it exists).
    pub fn persistent(file: PathBuf) -> Self {
        let sessions = std::fs::read_to_string(&file)
            .map(|text| {
                text.lines()
                    .filter(|l| l.len() == 64 && l.chars().all(|c| c.is_ascii_hexdigit()))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Self {
            codes: Mutex::default(),
            sessions: Mutex::new(sessions),
            file: Some(file),
        }
    }

    fn save(&self, sessions: &[String]) {
        let Some(file) = &self.file else { return };
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let partial = file.with_extension("partial");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .and_then(|mut f| {
                f.write_all(sessions.join("\n").as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&partial, file));
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not keep the window's session");
        }
    }

    /// A new one-time link.
    pub fn link(&self) -> UiLink {
        let code = super::token::new_token();
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes.retain(|_, made| made.elapsed() < LINK_TTL);
        if codes.len() >= MAX_CODES {
            // Past the bound the oldest unused link stops working.
            let oldest = codes
                .iter()
                .min_by_key(|(_, made)| **made)
                .map(|(c, _)| c.clone());
            if let Some(oldest) = oldest {
                codes.remove(&oldest);
            }
        }
        codes.insert(code.clone(), Instant::now());
        UiLink {
            path: format!("/ui/open?code={code}"),
        }
    }

    /// Uses up `code`; a new session token if it was valid.
    fn redeem(&self, code: &str) -> Option<String> {
        let made = self
            .codes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(code)?;
        if made.elapsed() >= LINK_TTL {
            return None;
        }
        let token = super::token::new_token();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.len() >= MAX_SESSIONS {
            sessions.remove(0);
        }
        sessions.push(hash(&token));
        self.save(&sessions);
        Some(token)
    }

    /// Ends the sessions the request's cookie carries (signing out of this window); whether
    /// one was ended.
    pub fn end(&self, headers: &HeaderMap) -> bool {
        let presented: Vec<String> = presented(headers).into_iter().map(hash).collect();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let before = sessions.len();
        sessions.retain(|s| !presented.contains(s));
        let ended = sessions.len() != before;
        if ended {
            self.save(&sessions);
        }
        ended
    }

    /// Whether the request carries a live session cookie.
    pub fn authenticated(&self, headers: &HeaderMap) -> bool {
        let presented = presented(headers);
        if presented.is_empty() {
            return false;
        }
        let presented: Vec<String> = presented.into_iter().map(hash).collect();
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.iter().any(|s| {
            presented
                .iter()
                .any(|p| bool::from(subtle::ConstantTimeEq::ct_eq(p.as_bytes(), s.as_bytes())))
        })
    }
}

/// The session tokens the request's cookie presents.
fn presented(headers: &HeaderMap) -> HashSet<&str> {
    let name = cookie_name(headers);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .collect()
}

/// Signs this window out: its session ends, and its cookie is cleared.
pub fn sign_out(sessions: &Sessions, headers: &HeaderMap) -> Response {
    sessions.end(headers);
    let cookie = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        cookie_name(headers)
    );
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

/// The cookie is named after the port, so two nodes on one host keep separate sessions
/// (cookies are per host, not per port).
fn cookie_name(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let port = host
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|p| p.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or("80");
    format!("peerchat_session_{port}")
}

/// Whether a cookie-authenticated request may change something: it carries the CSRF header,
/// and its `Origin`, if any, is this host.
pub fn same_origin_write(headers: &HeaderMap) -> bool {
    if headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    origin.to_str().ok() == Some(&format!("http://{host}"))
}

/// Adds the security headers every response carries.
pub fn harden(response: &mut Response) {
    let headers = response.headers_mut();
    // A stricter policy set by the handler (a file's) stays.
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

/// Paths served without authentication (the window itself holds no data).
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/" | "/ui/app.js" | "/ui/app.css" | "/ui/open" | "/favicon.ico"
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `GET /`.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/app.js`.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /ui/app.css`.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// `GET /favicon.ico`: none.
pub async fn favicon() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// `GET /ui/open?code=…`.
#[derive(Debug, Deserialize)]
pub struct OpenQuery {
    code: String,
}

/// Exchanges a one-time code for a session cookie, then leaves the code behind.
pub fn open(sessions: &Sessions, headers: &HeaderMap, query: Query<OpenQuery>) -> Response {
    let Some(token) = sessions.redeem(&query.code) else {
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "This link was used already or has expired. Run `peerchat ui` for a new one.\n",
        )
            .into_response();
    };
    let cookie = format!(
        "{}={token}; HttpOnly; SameSite=Strict; Path=/",
        cookie_name(headers)
    );
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, "/".into())],
    )
        .into_response()
}

/// A QR code of `data` as SVG.
pub fn qr_svg(data: &[u8]) -> Option<String> {
    let code = qrcode::QrCode::new(data).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn code_of(link: &UiLink) -> String {
        link.path.rsplit('=').next().unwrap().to_owned()
    }

    /// A request to the node on `host_port` carrying the session cookie of `cookie_port`.
    fn request(host_port: &str, cookie_port: &str, token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::HOST,
            format!("127.0.0.1:{host_port}").parse().unwrap(),
        );
        headers.insert(
            header::COOKIE,
            format!("other=1; peerchat_session_{cookie_port}={token}")
                .parse()
                .unwrap(),
        );
        headers
    }

    #[test]
    fn a_link_works_once_and_only_the_newest_links_are_kept() {
        let sessions = Sessions::default();
        let links: Vec<_> = (0..=MAX_CODES).map(|_| sessions.link()).collect();
        assert!(
            sessions.redeem(&code_of(&links[0])).is_none(),
            "the oldest link was dropped at the bound"
        );
        let last = code_of(links.last().unwrap());
        assert!(sessions.redeem(&last).is_some());
        assert!(sessions.redeem(&last).is_none(), "a link works once");
        assert!(sessions.redeem("not a code").is_none());
    }

    #[test]
    fn a_session_is_kept_as_a_hash_and_survives_a_restart_on_its_own_port_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ui-sessions");
        let sessions = Sessions::persistent(file.clone());
        let token = sessions.redeem(&code_of(&sessions.link())).unwrap();
        assert!(sessions.authenticated(&request("7001", "7001", &token)));
        assert!(!std::fs::read_to_string(&file).unwrap().contains(&token));

        let restarted = Sessions::persistent(file);
        assert!(restarted.authenticated(&request("7001", "7001", &token)));
        assert!(
            !restarted.authenticated(&request("7002", "7001", &token)),
            "a cookie of the node on another port"
        );
        assert!(!restarted.authenticated(&request("7001", "7001", "forged")));
    }

    #[test]
    fn signing_out_ends_that_session_only_and_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ui-sessions");
        let sessions = Sessions::persistent(file.clone());
        let mine = sessions.redeem(&code_of(&sessions.link())).unwrap();
        let other = sessions.redeem(&code_of(&sessions.link())).unwrap();
        assert!(!sessions.end(&request("7001", "7001", "forged")));
        assert!(sessions.end(&request("7001", "7001", &mine)));
        assert!(!sessions.authenticated(&request("7001", "7001", &mine)));
        assert!(sessions.authenticated(&request("7001", "7001", &other)));
        let restarted = Sessions::persistent(file);
        assert!(!restarted.authenticated(&request("7001", "7001", &mine)));
        assert!(restarted.authenticated(&request("7001", "7001", &other)));
    }

    #[test]
    fn writes_need_the_csrf_header_and_this_origin() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:7001".parse().unwrap());
        assert!(!same_origin_write(&headers));
        headers.insert(CSRF_HEADER, "1".parse().unwrap());
        assert!(same_origin_write(&headers), "no Origin sent");
        headers.insert(header::ORIGIN, "http://127.0.0.1:7001".parse().unwrap());
        assert!(same_origin_write(&headers));
        headers.insert(header::ORIGIN, "http://127.0.0.1:7002".parse().unwrap());
        assert!(!same_origin_write(&headers));
    }
}
