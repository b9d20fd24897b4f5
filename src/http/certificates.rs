//! Device certificates and the CA certificate.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;
use super::error::{ApiError, ApiJson, Problem};
use crate::fleet::certificates::{CertificateList, IssueCertificate, IssuedCertificate};

/// Issues a certificate for the device, signed by the built-in CA, with
/// subject CN = the device id: from a key pair made here (the private key
/// is in this answer only, never stored) or from the device's CSR.
#[utoipa::path(post, path = "/api/v1/devices/{id}/certificates", tag = "devices",
    params(("id" = String, Path, description = "device id")),
    request_body = IssueCertificate,
    responses((status = 201, body = IssuedCertificate),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(super) async fn devices_certificates_create(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<IssueCertificate>,
) -> Result<(StatusCode, Json<IssuedCertificate>), ApiError> {
    let mut issued = state.fleet.issue_certificates(vec![(id, request)]).await?;
    Ok((StatusCode::CREATED, Json(issued.remove(0))))
}

/// The device's certificates, oldest first, with their status.
#[utoipa::path(get, path = "/api/v1/devices/{id}/certificates", tag = "devices",
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = CertificateList), (status = 404, body = Problem)))]
pub(super) async fn devices_certificates_index(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CertificateList>, ApiError> {
    Ok(Json(state.fleet.certificates(&id).await?))
}

/// Revokes a certificate: every TLS listener refuses it from now on.
#[utoipa::path(delete, path = "/api/v1/devices/{id}/certificates/{serial}", tag = "devices",
    params(("id" = String, Path, description = "device id"),
        ("serial" = String, Path, description = "the certificate's hex serial")),
    responses((status = 204), (status = 404, body = Problem)))]
pub(super) async fn devices_certificates_destroy(
    State(state): State<AppState>,
    Path((id, serial)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.fleet.revoke_certificate(&id, &serial).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The built-in CA's certificate (PEM): trust it to reach the TLS
/// listeners (unless `--tls-cert` replaced the server certificate); it
/// signs device certificates.
#[utoipa::path(get, path = "/api/v1/ca.pem", tag = "system",
    responses((status = 200, content_type = "application/x-pem-file", body = String)))]
pub(super) async fn ca_show(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.tls.ca_pem().to_string(),
    )
}
