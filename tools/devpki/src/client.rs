//! A blocking mTLS client (rustls, ring) for the demo and the benchmark drivers: a
//! [`Leaf`] from this PKI talking to a server its CA signed. Not for production use:
//! it exists so that `zgate demo` can show a real client certificate at work without
//! the gateway itself linking a TLS client.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::{Ca, Leaf, PkiError};

/// A client configuration trusting `ca`, presenting `leaf` (or no certificate).
pub struct ClientSetup(Arc<ClientConfig>);

impl ClientSetup {
    /// Trust `ca`; present `leaf` when given.
    pub fn new(ca: &Ca, leaf: Option<&Leaf>) -> Result<ClientSetup, PkiError> {
        let bad = |e: &dyn std::fmt::Display| PkiError::Client(e.to_string());
        let mut roots = RootCertStore::empty();
        let root = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).map_err(|e| bad(&e))?;
        roots.add(root).map_err(|e| bad(&e))?;
        let b =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(&e))?
                .with_root_certificates(roots);
        let cfg = match leaf {
            None => b.with_no_client_auth(),
            Some(l) => {
                let chain = CertificateDer::pem_slice_iter(l.chain_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(&e))?;
                let key =
                    PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes()).map_err(|e| bad(&e))?;
                b.with_client_auth_cert(chain, key).map_err(|e| bad(&e))?
            }
        };
        Ok(ClientSetup(Arc::new(cfg)))
    }

    /// Connect to `addr` as server name `localhost`; the handshake runs on the first
    /// read or write. Reads time out after `timeout`.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TlsClient> {
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
        let conn = ClientConnection::new(Arc::clone(&self.0), name).map_err(io::Error::other)?;
        Ok(TlsClient(StreamOwned::new(conn, tcp)))
    }
}

/// One mTLS connection.
pub struct TlsClient(StreamOwned<ClientConnection, TcpStream>);

impl TlsClient {
    /// Write `msg`, read the same number of bytes back; `Ok(false)` when the server
    /// closed or refused the connection instead (an alert, a reset, an end).
    pub fn echo(&mut self, msg: &[u8]) -> io::Result<bool> {
        if self.0.write_all(msg).and_then(|()| self.0.flush()).is_err() {
            return Ok(false);
        }
        let mut back = vec![0u8; msg.len()];
        match self.0.read_exact(&mut back) {
            Ok(()) => Ok(back == msg),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                Err(e)
            }
            Err(_) => Ok(false),
        }
    }

    /// Wait (up to the read timeout) for the server to end the connection: `true` when
    /// it did (end of stream, reset, alert), `false` on data or a timeout.
    pub fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.0.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }

    /// The alert or error the last failed operation saw, in words.
    pub fn peer_alert(&mut self) -> Option<String> {
        let mut b = [0u8; 1];
        self.0.read(&mut b).err().map(|e| e.to_string())
    }
}
