//! The CLI's side of the operator socket: one HTTP/JSON request to the running
//! control process over its Unix socket (hyper's client; the server is axum).

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// Why a request got no answer, or a refusal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The control process is not there.
    #[error("cannot reach the control process on `{path}`: {source} (is `zgate-control serve` running? --socket / ZGATE_CONTROL_SOCKET)")]
    Unreachable {
        /// The socket.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange failed half-way.
    #[error("talking to the control process: {0}")]
    Protocol(String),
    /// The control process refused the request.
    #[error("refused ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its `error`.
        message: String,
    },
}

impl ClientError {
    /// sysexits: 69 unavailable, 77 not permitted, 65 refused as invalid, 70 other.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } => 69,
            ClientError::Refused {
                status: 401 | 403, ..
            } => 77,
            ClientError::Refused {
                status: 400 | 404, ..
            } => 65,
            _ => 70,
        }
    }
}

/// A request body.
pub enum Body {
    /// None (GET, or a POST without one).
    Empty,
    /// JSON.
    Json(serde_json::Value),
    /// Raw bytes (a table).
    Bytes(Vec<u8>),
}

/// Send one request and return the JSON answer of a 2xx, or the refusal.
pub fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Body,
) -> Result<serde_json::Value, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    rt.block_on(async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|source| ClientError::Unreachable {
                path: socket.display().to_string(),
                source,
            })?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tokio::spawn(async move {
            let _closed = conn.await;
        });
        let (content_type, bytes) = match body {
            Body::Empty => (None, Vec::new()),
            Body::Json(v) => (Some("application/json"), v.to_string().into_bytes()),
            Body::Bytes(b) => (Some("application/octet-stream"), b),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "zgate-control");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
            ClientError::Protocol(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body).trim()
            ))
        })?;
        if status.is_success() {
            Ok(json)
        } else {
            Err(ClientError::Refused {
                status: status.as_u16(),
                message: json
                    .get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or(if status == StatusCode::NOT_FOUND {
                        "not found"
                    } else {
                        "no reason given"
                    })
                    .to_string(),
            })
        }
    })
}
