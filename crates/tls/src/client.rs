//! TLS toward an upstream (origination): the gateway is the client, verifies the
//! upstream's certificate against a CA bundle and a name (webpki, as any TLS client
//! does), and may present its own certificate for mTLS.

use std::fmt;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::config::{certified_key, leaf_validity, provider, roots, MinVersion};
use crate::error::{RejectReason, TlsConfigError};
use crate::session::TlsSession;

/// A listener's upstream TLS configuration. Cheap to clone (`Arc`s).
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    validity: Option<(i64, i64)>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// What an upstream TLS configuration is made of (PEM bytes, not paths: sans-IO).
#[derive(Debug, Clone, Default)]
pub struct ClientTlsSpec<'a> {
    /// CA bundle the upstream's chain must lead to.
    pub ca_pem: &'a [u8],
    /// The name the upstream's certificate must carry (DNS name or IP address); also
    /// sent as SNI when it is a DNS name.
    pub server_name: &'a str,
    /// The gateway's own certificate chain and key, for upstreams that require mTLS.
    pub client_cert: Option<(&'a [u8], &'a [u8])>,
    /// ALPN protocols to offer (empty: none).
    pub alpn: Vec<Vec<u8>>,
    /// Oldest version accepted.
    pub min_version: MinVersion,
}

impl ClientTls {
    /// Build from `spec`. Errors name the input at fault.
    pub fn new(spec: &ClientTlsSpec<'_>) -> Result<ClientTls, TlsConfigError> {
        let server_name = ServerName::try_from(spec.server_name.to_string()).map_err(|e| {
            TlsConfigError::Settings {
                reason: format!(
                    "server_name `{}` is not a DNS name or IP address: {e}",
                    spec.server_name
                ),
            }
        })?;
        let versions: &[&rustls::SupportedProtocolVersion] = match spec.min_version {
            MinVersion::Tls13 => &[&rustls::version::TLS13],
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| TlsConfigError::Settings {
                reason: e.to_string(),
            })?
            .with_root_certificates(roots("ca", spec.ca_pem)?);
        let mut validity = None;
        let mut config = match spec.client_cert {
            Some((cert, key)) => {
                let ck = certified_key(cert, key)?;
                validity = Some(leaf_validity(&ck)?);
                builder
                    .with_client_auth_cert(ck.cert, key_der(key)?)
                    .map_err(|e| TlsConfigError::Key {
                        reason: e.to_string(),
                    })?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = spec.alpn.clone();
        // Reconnects to the same upstream resume (an in-memory cache shared by the
        // workers; rustls locks it per lookup, once per upstream connect).
        config.resumption = Resumption::in_memory_sessions(256);
        // The record layer after the handshake is ours (`record.rs`).
        config.enable_secret_extraction = true;
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
            validity,
        })
    }

    /// The gateway's own certificate's validity window (Unix seconds), if it has one.
    pub fn validity(&self) -> Option<(i64, i64)> {
        self.validity
    }

    /// A new client session for one upstream connection.
    pub fn connect(&self) -> Result<TlsSession, RejectReason> {
        let conn = rustls::client::UnbufferedClientConnection::new(
            Arc::clone(&self.config),
            self.server_name.clone(),
        )
        .map_err(|e| RejectReason::from_rustls(&e))?;
        TlsSession::client(conn)
    }
}

fn key_der(key_pem: &[u8]) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsConfigError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsConfigError::Key {
        reason: format!("no usable private key in the PEM input: {e}"),
    })
}
