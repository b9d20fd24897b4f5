//! The built-in certificate authority: made at first start (kept in the
//! data directory, else for the run), it signs the server certificate and
//! device certificates. Its private key is the server's own key material
//! and is kept (mode 0600); a device's private key is handed out once and
//! never kept.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::TlsError;

/// How long the built-in CA is valid.
const CA_VALID_DAYS: i64 = 3650;
/// How long a server certificate made at start is valid.
const SERVER_VALID_DAYS: i64 = 365;
/// A certificate starts this long before it is issued, so that a device
/// whose clock is a little behind accepts it.
const BACKDATE_SECS: i64 = 3600;

/// The CA: its certificate and the key that signs with it.
pub(crate) struct Authority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate made for a device.
pub(crate) struct Issued {
    pub serial: String,
    pub cert_pem: String,
    /// Present when the key pair was made here (not for a CSR).
    pub key_pem: Option<String>,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

/// What a device certificate should say beyond its subject.
pub(crate) struct IssueSpec<'a> {
    pub not_before_ms: Option<i64>,
    pub not_after_ms: i64,
    /// A PEM certificate signing request; `None` makes a key pair.
    pub csr: Option<&'a str>,
}

impl Authority {
    /// Loads the CA from `dir/tls/` or makes one there; `None` makes one
    /// for this run only.
    pub(crate) fn load_or_create(dir: Option<&Path>) -> Result<Self, TlsError> {
        let Some(dir) = dir else {
            return Self::create();
        };
        let tls = dir.join("tls");
        let (cert_path, key_path) = (tls.join("ca.pem"), tls.join("ca.key"));
        if cert_path.exists() || key_path.exists() {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).map_err(|e| TlsError::File {
                    path: p.display().to_string(),
                    detail: e.to_string(),
                })
            };
            let (cert_pem, key_pem) = (read(&cert_path)?, read(&key_path)?);
            let bad = |detail: String| TlsError::File {
                path: tls.display().to_string(),
                detail: format!(
                    "the stored CA does not load ({detail}); remove ca.pem and ca.key to make a new one (device certificates it signed stop working)"
                ),
            };
            let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(e.to_string()))?;
            let issuer =
                Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| bad(e.to_string()))?;
            let cert_der = first_cert(&cert_pem).ok_or_else(|| bad("no certificate".into()))?;
            return Ok(Self {
                cert_pem,
                cert_der,
                issuer,
            });
        }
        let made = Self::create()?;
        let key_pem = made.issuer.key().serialize_pem();
        write_private(&tls, &key_path, key_pem.as_bytes())?;
        std::fs::write(&cert_path, made.cert_pem.as_bytes()).map_err(|e| TlsError::File {
            path: cert_path.display().to_string(),
            detail: e.to_string(),
        })?;
        tracing::info!(path = %tls.display(), "made the built-in certificate authority");
        Ok(made)
    }

    fn create() -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        // A random part keeps two servers' CAs apart: a certificate of
        // one is "unknown issuer" to the other, not a bad signature.
        name.push(
            DnType::CommonName,
            format!("iotmock CA {:08x}", rand::random::<u32>()),
        );
        name.push(DnType::OrganizationName, "iotmock");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = datetime(crate::clock::wall_ms())?;
        params.not_before = now - time::Duration::seconds(BACKDATE_SECS);
        params.not_after = now + time::Duration::days(CA_VALID_DAYS);
        params.serial_number = Some(new_serial().1);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    pub(crate) fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub(crate) fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A server certificate for `names` (DNS names or IP addresses) with a
    /// fresh key, and the chain to present (leaf, then the CA).
    pub(crate) fn server_cert(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "iotmock server");
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = datetime(crate::clock::wall_ms())?;
        params.not_before = now - time::Duration::seconds(BACKDATE_SECS);
        params.not_after = now + time::Duration::days(SERVER_VALID_DAYS);
        params.serial_number = Some(new_serial().1);
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key))
    }

    /// A client certificate whose subject common name is `device`.
    pub(crate) fn issue(&self, device: &str, spec: &IssueSpec<'_>) -> Result<Issued, TlsError> {
        let (serial, serial_number) = new_serial();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, device);
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let not_before_ms = spec
            .not_before_ms
            .unwrap_or_else(|| crate::clock::wall_ms() - BACKDATE_SECS * 1000);
        params.not_before = datetime(not_before_ms)?;
        params.not_after = datetime(spec.not_after_ms)?;
        params.serial_number = Some(serial_number);
        let (cert, key_pem) = match spec.csr {
            Some(csr) => {
                // Only the CSR's key is used: the subject, validity and
                // usages are ours, whatever the request asks for.
                let csr = CertificateSigningRequestParams::from_pem(csr).map_err(|e| {
                    TlsError::Csr(format!(
                        "{e}; send a PEM PKCS#10 request (-----BEGIN CERTIFICATE REQUEST-----), e.g. from `openssl req -new -key device.key`"
                    ))
                })?;
                (params.signed_by(&csr.public_key, &self.issuer)?, None)
            }
            None => {
                let key = KeyPair::generate()?;
                let cert = params.signed_by(&key, &self.issuer)?;
                (cert, Some(key.serialize_pem()))
            }
        };
        Ok(Issued {
            serial,
            cert_pem: cert.pem(),
            key_pem,
            not_before_ms,
            not_after_ms: spec.not_after_ms,
        })
    }
}

/// A random positive 128-bit serial: its hex form and its encoding.
fn new_serial() -> (String, SerialNumber) {
    let mut bytes: [u8; 16] = rand::random();
    // A first byte of 0x01..=0x7f: positive, and encoded as given, so the
    // hex of the bytes read back from a certificate matches.
    bytes[0] = (bytes[0] & 0x7f).max(1);
    (crate::hex::hex(&bytes), SerialNumber::from_slice(&bytes))
}

fn datetime(ms: i64) -> Result<OffsetDateTime, TlsError> {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .map_err(|_| TlsError::Invalid(format!("{ms} ms is not a certificate date")))
}

/// The first certificate of a PEM text.
pub(crate) fn first_cert(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()
}

/// Writes a private key readable by its owner only.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let fail = |e: std::io::Error| TlsError::File {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    let mut file = options.open(path).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)
}
