//! The CLI's client side: it finds the running daemon's API address and token in the data
//! directory and calls the API.

use std::path::Path;

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api::ErrorView;
use crate::daemon::{API_ADDR_FILE, API_TOKEN_FILE};

/// A client of the local API.
#[derive(Debug)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// A failed CLI call, as one line for people.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

impl ApiClient {
    /// Reads the address and token the daemon wrote into `data_dir`.
    pub fn from_data_dir(data_dir: &Path) -> Result<Self, CliError> {
        let read = |name: &str| {
            std::fs::read_to_string(data_dir.join(name)).map(|s| s.trim().to_owned()).map_err(|_| {
                CliError(format!(
                    "no running daemon found in {} (start it with `peerchat daemon --data-dir {}`)",
                    data_dir.display(),
                    data_dir.display()
                ))
            })
        };
        Ok(Self {
            base: format!("http://{}", read(API_ADDR_FILE)?),
            token: read(API_TOKEN_FILE)?,
            http: reqwest::Client::builder()
                .no_proxy()
                // Plain HTTP on loopback; reqwest still wants a TLS configuration to exist.
                .use_preconfigured_tls(plain_only_tls()?)
                .build()
                .map_err(|e| CliError(e.to_string()))?,
        })
    }

    /// Calls the API; an error answer becomes its message.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, CliError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|_| {
            CliError(format!(
                "the daemon does not answer at {}; is it running?",
                self.base
            ))
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CliError(e.to_string()))?;
        if status.is_success() {
            let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice(bytes)
                .map_err(|e| CliError(format!("unexpected answer from the daemon: {e}")));
        }
        Err(CliError(
            match serde_json::from_slice::<ErrorView>(&bytes) {
                Ok(e) => e.message,
                Err(_) => format!("the daemon answered {status}"),
            },
        ))
    }
}

/// A TLS configuration that trusts nothing: the API is plain HTTP on loopback, so it is never used.
fn plain_only_tls() -> Result<rustls::ClientConfig, CliError> {
    Ok(
        rustls::ClientConfig::builder_with_provider(peerchat_pki::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| CliError(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    )
}

impl ApiClient {
    /// Follows the daemon's event stream, calling `on_event` with each event's type and JSON data
    /// until the stream ends.
    pub async fn events(&self, mut on_event: impl FnMut(&str, &str)) -> Result<(), CliError> {
        let mut response = self
            .http
            .get(format!("{}/api/v1/events", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|_| {
                CliError(format!(
                    "the daemon does not answer at {}; is it running?",
                    self.base
                ))
            })?;
        if !response.status().is_success() {
            return Err(CliError(format!(
                "the daemon answered {}",
                response.status()
            )));
        }
        let mut buffer = String::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| CliError(e.to_string()))?
        {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut kind = "";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(k) = line.strip_prefix("event:") {
                        kind = k.trim();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if !kind.is_empty() {
                    on_event(kind, &data);
                }
            }
        }
        Ok(())
    }
}
