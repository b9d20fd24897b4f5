//! Device certificates: issued by the built-in CA with subject CN = the
//! device id (from a key pair made here, or from the device's own CSR),
//! listed, revoked. Stored with the device before the API answers; the
//! private key of a pair made here is in that one answer and never kept.
//! A device's certificates are revoked when it is deleted, so a device
//! made again under the same id does not inherit them.

use serde::{Deserialize, Serialize};

use super::store::CertRow;
use super::{Fleet, FleetError};
use crate::clock::{parse_rfc3339_ms, rfc3339_ms, wall_ms};
use crate::transport::IssueSpec;

/// A certificate to sign: device, CSR, validity (wall ms).
type Spec = (String, Option<String>, (Option<i64>, i64));

/// Default validity of a device certificate.
pub(crate) const DEFAULT_VALID_DAYS: u32 = 365;
/// Longest validity of a device certificate (about 100 years).
pub(crate) const MAX_VALID_DAYS: u32 = 36_500;

/// Body of `POST /devices/{id}/certificates`; every field is optional.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssueCertificate {
    /// Days from now the certificate is valid (default 365).
    #[serde(default)]
    pub valid_days: Option<u32>,
    /// A PEM certificate signing request made by the device: its key is
    /// certified and no private key is returned. Subject and extensions
    /// are ours (CN = the device id), whatever the request asks.
    #[serde(default)]
    pub csr: Option<String>,
    /// Start of validity, RFC 3339 (default: an hour ago). With
    /// `not_after`, makes certificates that are expired or not yet valid,
    /// to test how firmware and servers refuse them.
    #[serde(default)]
    pub not_before: Option<String>,
    /// End of validity, RFC 3339; replaces `valid_days`.
    #[serde(default)]
    pub not_after: Option<String>,
}

/// A certificate just issued.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct IssuedCertificate {
    /// Hex serial number; the id to revoke it by.
    pub serial: String,
    pub device: String,
    /// PEM certificate (subject CN = the device id).
    pub certificate: String,
    /// PEM private key (PKCS#8), only when it was made here; shown only in
    /// this answer and never stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// The CA certificate (PEM) that signed it; also at `GET /api/v1/ca.pem`.
    pub ca: String,
    pub not_before: String,
    pub not_after: String,
}

/// A stored certificate, as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct CertificateView {
    pub serial: String,
    pub device: String,
    pub certificate: String,
    pub not_before: String,
    pub not_after: String,
    pub created_at: String,
    /// `valid`, `expired`, `not_yet_valid` or `revoked` (wall time).
    pub status: &'static str,
    pub revoked_at: Option<String>,
}

/// `GET /devices/{id}/certificates`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct CertificateList {
    pub items: Vec<CertificateView>,
}

impl From<CertRow> for CertificateView {
    fn from(c: CertRow) -> Self {
        let now = wall_ms();
        let status = if c.revoked_at.is_some() {
            "revoked"
        } else if now >= c.not_after {
            "expired"
        } else if now < c.not_before {
            "not_yet_valid"
        } else {
            "valid"
        };
        Self {
            serial: c.serial,
            device: c.device,
            certificate: c.cert_pem,
            not_before: rfc3339_ms(c.not_before),
            not_after: rfc3339_ms(c.not_after),
            created_at: rfc3339_ms(c.created_at),
            status,
            revoked_at: c.revoked_at.map(rfc3339_ms),
        }
    }
}

impl IssueCertificate {
    /// Checks the request; the validity span in wall ms.
    fn window(&self) -> Result<(Option<i64>, i64), FleetError> {
        let parse = |field: &str, v: &Option<String>| -> Result<Option<i64>, FleetError> {
            v.as_deref()
                .map(|t| {
                    parse_rfc3339_ms(t).ok_or_else(|| {
                        FleetError::Invalid(format!(
                            "{field} {t:?} is not an RFC 3339 time: write e.g. 2027-01-01T00:00:00Z"
                        ))
                    })
                })
                .transpose()
        };
        let not_before = parse("not_before", &self.not_before)?;
        let not_after = parse("not_after", &self.not_after)?;
        if self.valid_days.is_some() && not_after.is_some() {
            return Err(FleetError::Invalid(
                "give valid_days or not_after, not both".into(),
            ));
        }
        let not_after = match (not_after, self.valid_days) {
            (Some(t), _) => t,
            (None, Some(days)) if days == 0 || days > MAX_VALID_DAYS => {
                return Err(FleetError::Invalid(format!(
                    "valid_days must be 1 to {MAX_VALID_DAYS}, got {days}; for an expired certificate give not_before and not_after"
                )));
            }
            (None, days) => {
                not_before.unwrap_or_else(wall_ms).max(wall_ms())
                    + i64::from(days.unwrap_or(DEFAULT_VALID_DAYS)) * 86_400_000
            }
        };
        if not_before.is_some_and(|b| b >= not_after) {
            return Err(FleetError::Invalid(
                "not_before must come before not_after".into(),
            ));
        }
        Ok((not_before, not_after))
    }
}

impl Fleet {
    /// Issues certificates for existing devices and stores them (all or
    /// none) before returning them.
    pub(crate) async fn issue_certificates(
        &self,
        requests: Vec<(String, IssueCertificate)>,
    ) -> Result<Vec<IssuedCertificate>, FleetError> {
        let mut specs = Vec::with_capacity(requests.len());
        for (id, request) in requests {
            self.entry(&id)?;
            let window = request.window()?;
            specs.push((id, request.csr, window));
        }
        let (rows, issued) = self.sign_blocking(specs).await?;
        self.0.store.insert_certs(rows).await?;
        Ok(issued)
    }

    /// Default certificates for devices being created.
    pub(super) async fn make_certificates(
        &self,
        ids: Vec<String>,
    ) -> Result<(Vec<CertRow>, Vec<IssuedCertificate>), FleetError> {
        let window = IssueCertificate::default().window()?;
        self.sign_blocking(ids.into_iter().map(|id| (id, None, window)).collect())
            .await
    }

    /// Signs on a blocking thread: signing takes a moment per device, too
    /// long for a runtime thread. A panic while signing is raised again
    /// here (a bug, not a refusal).
    async fn sign_blocking(
        &self,
        specs: Vec<Spec>,
    ) -> Result<(Vec<CertRow>, Vec<IssuedCertificate>), FleetError> {
        let fleet = self.clone();
        match tokio::task::spawn_blocking(move || fleet.sign(specs)).await {
            Ok(signed) => signed,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Only when the runtime stops before the task starts.
                Err(_) => Err(FleetError::Invalid(
                    "the server is shutting down; no certificate was issued".into(),
                )),
            },
        }
    }

    fn sign(&self, specs: Vec<Spec>) -> Result<(Vec<CertRow>, Vec<IssuedCertificate>), FleetError> {
        let tls = &self.0.tls;
        let created_at = wall_ms();
        let mut rows = Vec::with_capacity(specs.len());
        let mut out = Vec::with_capacity(specs.len());
        for (id, csr, (not_before_ms, not_after_ms)) in specs {
            let issued = tls
                .issue(
                    &id,
                    &IssueSpec {
                        not_before_ms,
                        not_after_ms,
                        csr: csr.as_deref(),
                    },
                )
                .map_err(|e| FleetError::Invalid(e.to_string()))?;
            rows.push(CertRow {
                serial: issued.serial.clone(),
                device: id.clone(),
                cert_pem: issued.cert_pem.clone(),
                not_before: issued.not_before_ms,
                not_after: issued.not_after_ms,
                created_at,
                revoked_at: None,
            });
            out.push(IssuedCertificate {
                serial: issued.serial,
                device: id,
                certificate: issued.cert_pem,
                private_key: issued.key_pem,
                ca: tls.ca_pem().to_string(),
                not_before: rfc3339_ms(issued.not_before_ms),
                not_after: rfc3339_ms(issued.not_after_ms),
            });
        }
        Ok((rows, out))
    }

    /// A device's certificates, oldest first.
    pub(crate) async fn certificates(&self, id: &str) -> Result<CertificateList, FleetError> {
        self.entry(id)?;
        let rows = self.0.store.certs(id).await?;
        Ok(CertificateList {
            items: rows.into_iter().map(CertificateView::from).collect(),
        })
    }

    /// Revokes a device's certificate: refused by every TLS listener from
    /// now on. Revoking twice is not an error.
    pub(crate) async fn revoke_certificate(
        &self,
        id: &str,
        serial: &str,
    ) -> Result<(), FleetError> {
        self.entry(id)?;
        let serial = serial.to_ascii_lowercase();
        let found = self.0.store.revoke_cert(id, &serial, wall_ms()).await?;
        if found.is_none() {
            return Err(FleetError::NoCertificate {
                device: id.to_string(),
                serial,
            });
        }
        self.0.tls.revoke([serial]);
        Ok(())
    }
}
