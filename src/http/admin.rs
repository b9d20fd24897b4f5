//! Admin authentication: with a token configured (`--admin-token`,
//! `IOTMOCK_ADMIN_TOKEN` or `--admin-token-file`), every `/api/v1` route
//! but `/health` and the device API (where devices use their own
//! credentials) requires `Authorization: Bearer TOKEN`. Only the token's
//! SHA-256 digest is kept, and requests are compared digest to digest.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// The admin token, as its digest.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken([u8; 32]);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Why a token was refused at start-up.
#[derive(Debug, thiserror::Error)]
#[error("the admin token is empty: give one (e.g. from `openssl rand -hex 16`)")]
pub struct EmptyToken;

impl AdminToken {
    /// Takes a token (surrounding white space, such as a file's final
    /// newline, is not part of it).
    pub fn new(token: &str) -> Result<Self, EmptyToken> {
        let token = token.trim();
        if token.is_empty() {
            return Err(EmptyToken);
        }
        Ok(Self(Sha256::digest(token.as_bytes()).into()))
    }

    fn admits(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Comparing digests: equal prefixes of the token tell nothing.
        digest == self.0
    }
}

/// Answers 401 unless the request carries the admin token.
pub(super) async fn require_admin(
    State(token): State<Option<AdminToken>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, value)| value.trim());
    match presented {
        Some(value) if token.admits(value) => next.run(request).await,
        Some(_) => unauthorized(
            "the bearer token is not the admin token; send the one given with --admin-token (or IOTMOCK_ADMIN_TOKEN, --admin-token-file)",
        ),
        None => unauthorized(
            "this server requires the admin token: send `Authorization: Bearer TOKEN` with the token given with --admin-token (or IOTMOCK_ADMIN_TOKEN, --admin-token-file)",
        ),
    }
}

fn unauthorized(detail: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"iotmock admin\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_digest_and_ignore_surrounding_space() {
        let token = AdminToken::new("s3cret-token\n").unwrap();
        assert!(token.admits("s3cret-token"));
        assert!(!token.admits("s3cret"));
        assert!(!token.admits(""));
        assert!(AdminToken::new(" \n").is_err());
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
