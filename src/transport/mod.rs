//! Secure and web transports: TLS (rustls, the ring provider), MQTT over
//! WebSocket (tungstenite), and the built-in certificate authority. A
//! transport accepts a socket, wraps it (TLS, WebSocket, or both), learns
//! the client certificate's identity, and hands the stream to the broker
//! engine ([`MqttHandle::serve_stream`]) or to the HTTP connection loop.
//!
//! Client certificates are checked during the TLS handshake: chain to a
//! trusted CA (the built-in one, and `--tls-client-ca`), validity in wall
//! time, and the revocation list the fleet keeps here. A refused
//! certificate fails the handshake; the reason is counted and logged
//! (rate-limited). Whether the device may connect at all (suspended,
//! deleted) is the authorizer's call at CONNECT. This module does not
//! decide who a certificate belongs to beyond its subject common name.

pub(crate) mod ca;
mod ws;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::mqtt::{MqttHandle, PeerCert};
use crate::ratelimit::warn_limited;

pub(crate) use ca::{IssueSpec, Issued};

/// A client that has not finished its TLS (or WebSocket) handshake within
/// this is closed.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The WebSocket path of MQTT over WebSocket.
pub(crate) const WS_PATH: &str = "/mqtt";
/// The WebSocket subprotocol of MQTT.
pub(crate) const WS_PROTOCOL: &str = "mqtt";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {detail}")]
    File { path: String, detail: String },
    #[error("making a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the certificate signing request does not parse: {0}")]
    Csr(String),
    #[error("{0}")]
    Invalid(String),
}

/// How TLS is set up: the names the built-in server certificate covers, or
/// a certificate and key brought along, and more client CAs to trust.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Extra DNS names or IP addresses of the server certificate
    /// (`--tls-name`); localhost, 127.0.0.1 and ::1 are always covered.
    pub names: Vec<String>,
    /// A PEM certificate chain to serve instead of the built-in one
    /// (`--tls-cert`), with its key (`--tls-key`).
    pub cert: Option<PathBuf>,
    /// The PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA certificates whose client certificates are accepted too
    /// (`--tls-client-ca`).
    pub client_ca: Option<PathBuf>,
}

/// Why a TLS client was refused, for counters and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Revoked,
    Expired,
    UnknownCa,
    BadCertificate,
    /// `--mqtt-auth certificates` and no certificate.
    CertificateRequired,
    /// A certificate of a device the fleet does not have (deleted).
    UnknownDevice,
    /// A certificate of a suspended or decommissioned device.
    DeviceNotActive,
    /// The handshake failed for another reason (not TLS, timed out, no
    /// common cipher).
    Handshake,
}

impl Refusal {
    pub(crate) const ALL: [Refusal; 8] = [
        Refusal::Revoked,
        Refusal::Expired,
        Refusal::UnknownCa,
        Refusal::BadCertificate,
        Refusal::CertificateRequired,
        Refusal::UnknownDevice,
        Refusal::DeviceNotActive,
        Refusal::Handshake,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Revoked => "revoked",
            Refusal::Expired => "expired",
            Refusal::UnknownCa => "unknown_ca",
            Refusal::BadCertificate => "bad_certificate",
            Refusal::CertificateRequired => "certificate_required",
            Refusal::UnknownDevice => "unknown_device",
            Refusal::DeviceNotActive => "device_not_active",
            Refusal::Handshake => "handshake",
        }
    }

    fn of(error: &CertificateError) -> Self {
        match error {
            CertificateError::Revoked => Refusal::Revoked,
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Refusal::Expired,
            CertificateError::UnknownIssuer => Refusal::UnknownCa,
            _ => Refusal::BadCertificate,
        }
    }
}

/// Counters of the TLS listeners, for `/health` and `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct TlsStats {
    handshakes: AtomicU64,
    with_certificate: AtomicU64,
    refused: [AtomicU64; 8],
}

/// What the TLS listeners did since the start.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct TlsCounters {
    /// Completed TLS handshakes (all listeners).
    pub handshakes: u64,
    /// Of those, with a verified client certificate.
    pub with_certificate: u64,
    /// Refusals by reason: revoked, expired (or not yet valid), unknown_ca,
    /// bad_certificate, certificate_required, unknown_device,
    /// device_not_active, handshake.
    #[schema(value_type = Object)]
    pub refused: std::collections::BTreeMap<&'static str, u64>,
}

impl TlsStats {
    pub(crate) fn refused(&self, reason: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn counters(&self) -> TlsCounters {
        TlsCounters {
            handshakes: self.handshakes.load(Ordering::Relaxed),
            with_certificate: self.with_certificate.load(Ordering::Relaxed),
            refused: Refusal::ALL
                .iter()
                .zip(&self.refused)
                .map(|(r, n)| (r.as_str(), n.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

/// The server's TLS material: the CA, the server configuration, the
/// revocation list. Cheap to share (`Arc`).
pub(crate) struct Tls {
    authority: ca::Authority,
    acceptor: TlsAcceptor,
    revoked: Arc<RwLock<HashSet<String>>>,
    stats: Arc<TlsStats>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Loads or makes the CA and builds the server configuration.
    pub(crate) fn start(
        settings: &TlsSettings,
        data_dir: Option<&Path>,
    ) -> Result<Arc<Self>, TlsError> {
        let authority = ca::Authority::load_or_create(data_dir)?;
        let (chain, key) = match (&settings.cert, &settings.key) {
            (Some(cert), Some(key)) => (read_certs(cert)?, read_key(key)?),
            (None, None) => {
                let mut names: Vec<String> =
                    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
                for n in &settings.names {
                    if !names.contains(n) {
                        names.push(n.clone());
                    }
                }
                authority.server_cert(&names)?
            }
            _ => {
                return Err(TlsError::Invalid(
                    "--tls-cert and --tls-key go together: give both, or neither for a certificate signed by the built-in CA".into(),
                ));
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(authority.cert_der().clone())?;
        if let Some(path) = &settings.client_ca {
            for cert in read_certs(path)? {
                roots.add(cert)?;
            }
        }
        let stats = Arc::new(TlsStats::default());
        let revoked = Arc::new(RwLock::new(HashSet::new()));
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Invalid(format!("client certificate verifier: {e}")))?;
        let verifier = Arc::new(Verifier {
            inner,
            revoked: revoked.clone(),
            stats: stats.clone(),
        });
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        Ok(Arc::new(Self {
            authority,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            revoked,
            stats,
        }))
    }

    /// The CA certificate (PEM) that signs device certificates and, unless
    /// `--tls-cert` was given, the server certificate.
    pub(crate) fn ca_pem(&self) -> &str {
        self.authority.cert_pem()
    }

    pub(crate) fn stats(&self) -> &Arc<TlsStats> {
        &self.stats
    }

    pub(crate) fn issue(&self, device: &str, spec: &IssueSpec<'_>) -> Result<Issued, TlsError> {
        self.authority.issue(device, spec)
    }

    /// Certificates with these serials are refused from now on.
    pub(crate) fn revoke<I: IntoIterator<Item = String>>(&self, serials: I) {
        // A std lock: a set insert, never held across an await.
        self.revoked.write().unwrap().extend(serials);
    }

    /// The TLS handshake on an accepted socket; the client certificate's
    /// identity, if it sent one. A refusal is logged (rate-limited) and
    /// counted; `None` then.
    pub(crate) async fn accept<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        listener: &'static str,
    ) -> Option<(tokio_rustls::server::TlsStream<S>, Option<PeerCert>)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let error =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    self.stats.handshakes.fetch_add(1, Ordering::Relaxed);
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| peer_cert(c));
                    if cert.is_some() {
                        self.stats.with_certificate.fetch_add(1, Ordering::Relaxed);
                    }
                    return Some((tls, cert));
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the handshake timed out".to_string(),
            };
        if let Some(reason) = cert_refusal(&error) {
            // Counted by the verifier, which knows the exact reason.
            warn_limited!(%peer, listener, reason = reason.as_str(), detail = %error,
                "TLS client certificate refused");
        } else {
            self.stats.refused(Refusal::Handshake);
            tracing::debug!(%peer, listener, detail = %error, "TLS handshake failed");
        }
        None
    }
}

/// The refusal a handshake error text names, when it is about the
/// client's certificate.
fn cert_refusal(error: &str) -> Option<Refusal> {
    let e = error.to_ascii_lowercase();
    if !e.contains("certificate") {
        return None;
    }
    Some(if e.contains("revoked") {
        Refusal::Revoked
    } else if e.contains("expired") || e.contains("not valid yet") || e.contains("notvalidyet") {
        Refusal::Expired
    } else if e.contains("unknownissuer") || e.contains("unknown issuer") {
        Refusal::UnknownCa
    } else {
        Refusal::BadCertificate
    })
}

/// The subject common name and serial of a DER certificate.
pub(crate) fn peer_cert(der: &CertificateDer<'_>) -> Option<PeerCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(PeerCert {
        common_name,
        serial: crate::hex::hex(cert.tbs_certificate.raw_serial()),
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |detail: String| TlsError::File {
        path: path.display().to_string(),
        detail,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(format!("{e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail(format!("{e}")))?;
    if certs.is_empty() {
        return Err(fail(
            "no PEM certificate in it (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        detail: format!("{e}; give a PEM private key (PKCS#8, PKCS#1 or SEC1)"),
    })
}

/// The web PKI check, then the revocation list; refusals are counted by
/// reason.
#[derive(Debug)]
struct Verifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<RwLock<HashSet<String>>>,
    stats: Arc<TlsStats>,
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // A client without a certificate may still log in with a password;
        // `--mqtt-auth certificates` refuses it at CONNECT.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| {
                let reason = match e {
                    rustls::Error::InvalidCertificate(c) => Refusal::of(c),
                    _ => Refusal::BadCertificate,
                };
                self.stats.refused(reason);
            })?;
        let serial = peer_cert(end_entity).map(|c| c.serial);
        // A std lock: a set lookup, never held across an await.
        if serial.is_some_and(|s| self.revoked.read().unwrap().contains(&s)) {
            self.stats.refused(Refusal::Revoked);
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Which MQTT transport a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttTransport {
    /// MQTT over TLS (`--mqtts`).
    Tls,
    /// MQTT over WebSocket (`--ws`).
    Ws,
    /// MQTT over WebSocket over TLS (`--wss`).
    Wss,
}

impl MqttTransport {
    /// The command-line flag of the listener.
    pub fn flag(self) -> &'static str {
        match self {
            MqttTransport::Tls => "--mqtts",
            MqttTransport::Ws => "--ws",
            MqttTransport::Wss => "--wss",
        }
    }
}

/// A running MQTT transport listener; aborted on drop.
pub(crate) struct MqttListener {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MqttListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MqttListener {
    /// Accepts on `listener` and serves each connection through `kind`.
    pub(crate) fn start(
        kind: MqttTransport,
        listener: TcpListener,
        tls: Arc<Tls>,
        mqtt: MqttHandle,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let flag = kind.flag();
        // Accepted, handshaken and served on the broker's connection
        // thread, in the order the sockets become ready, as plain TCP is.
        let listener = listener.into_std()?;
        let runtime = mqtt.connection_runtime().clone();
        let task = runtime.spawn(async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(error) => {
                    tracing::error!(%error, listener = flag, "MQTT listener cannot be registered");
                    return;
                }
            };
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(pair) => pair,
                    Err(error) => {
                        warn_limited!(%error, listener = flag, "MQTT listener cannot accept; backing off");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (tls, mqtt) = (tls.clone(), mqtt.clone());
                // One task per kind: a task is as large as its future, and
                // an idle TLS connection should not carry a WebSocket's
                // state.
                match kind {
                    MqttTransport::Tls => tokio::spawn(async move {
                        if let Some((stream, cert)) = tls.accept(stream, peer, flag).await {
                            mqtt.serve_stream(stream, peer, cert).await;
                        }
                    }),
                    MqttTransport::Ws => tokio::spawn(async move {
                        if let Some(stream) = ws::accept(stream, peer).await {
                            mqtt.serve_stream(stream, peer, None).await;
                        }
                    }),
                    MqttTransport::Wss => tokio::spawn(async move {
                        if let Some((stream, cert)) = tls.accept(stream, peer, flag).await
                            && let Some(stream) = ws::accept(stream, peer).await
                        {
                            mqtt.serve_stream(stream, peer, cert).await;
                        }
                    }),
                };
            }
        });
        tracing::info!(%addr, listener = flag, "MQTT transport listening");
        Ok(Self { addr, task })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_certificates_name_the_device_and_chain_to_the_ca() {
        let tls = Tls::start(&TlsSettings::default(), None).unwrap();
        let now = crate::clock::wall_ms();
        let issued = tls
            .issue(
                "dev-1",
                &IssueSpec {
                    not_before_ms: None,
                    not_after_ms: now + 86_400_000,
                    csr: None,
                },
            )
            .unwrap();
        assert!(issued.key_pem.is_some());
        let der = ca::first_cert(&issued.cert_pem).unwrap();
        let who = peer_cert(&der).unwrap();
        assert_eq!(who.common_name, "dev-1");
        assert_eq!(who.serial, issued.serial);
        assert!(tls.ca_pem().contains("BEGIN CERTIFICATE"));
    }

    #[test]
    fn handshake_errors_name_their_reason() {
        assert_eq!(
            cert_refusal("invalid peer certificate: Revoked"),
            Some(Refusal::Revoked)
        );
        assert_eq!(
            cert_refusal("invalid peer certificate: UnknownIssuer"),
            Some(Refusal::UnknownCa)
        );
        assert_eq!(cert_refusal("received corrupt message"), None);
    }
}
