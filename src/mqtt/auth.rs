//! Who may connect, publish and subscribe: our own [`Authorizer`] trait (the
//! fleet module implements it with device credentials) and its adapter to
//! the engine's auth provider. No engine type appears in the trait.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use mqtt5::broker::auth::{AuthProvider, AuthResult};
use mqtt5::packet::connect::ConnectPacket;
use mqtt5::protocol::v5::reason_codes::ReasonCode;

/// Decides connections and per-topic access. Called on the client's task:
/// keep it quick and never block on I/O.
pub trait Authorizer: Send + Sync + 'static {
    /// A CONNECT. `user` in [`AuthDecision::Allow`] is what the other two
    /// methods (and the client events) see as the user; a persistent
    /// session resumes only for the same user.
    fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> AuthDecision;
    /// A PUBLISH (and a will). Denied: PUBACK/PUBREC 0x87 for QoS 1/2, a
    /// silent drop for QoS 0.
    fn may_publish(&self, client_id: &str, user: Option<&str>, topic: &str) -> bool;
    /// One filter of a SUBSCRIBE. Denied: SUBACK 0x87 (v5) or 0x80 (3.1.1).
    fn may_subscribe(&self, client_id: &str, user: Option<&str>, filter: &str) -> bool;
}

/// The answer to a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    Allow {
        user: Option<String>,
    },
    /// CONNACK 0x86 (v5) / 4 (3.1.1): bad user name or password.
    BadCredentials,
    /// CONNACK 0x87 (v5) / 5 (3.1.1): not authorized.
    NotAuthorized,
}

/// Our authorizer as the engine's provider. Replacing the engine's default
/// provider also removes its failed-login lockout (5 failures in 60 s lock a
/// user out for 300 s), which would make a mock broker flaky under tests
/// that try bad passwords on purpose.
pub(crate) struct Adapter(pub Arc<dyn Authorizer>);

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl AuthProvider for Adapter {
    fn authenticate<'a>(
        &'a self,
        connect: &'a ConnectPacket,
        _client_addr: SocketAddr,
    ) -> BoxFuture<'a, mqtt5::Result<AuthResult>> {
        let decision = self.0.authenticate(
            &connect.client_id,
            connect.username.as_deref(),
            connect.password.as_deref(),
        );
        Box::pin(async move {
            Ok(match decision {
                AuthDecision::Allow { user: Some(user) } => AuthResult::success_with_user(user),
                AuthDecision::Allow { user: None } => AuthResult::success(),
                AuthDecision::BadCredentials => AuthResult::fail(ReasonCode::BadUsernameOrPassword),
                AuthDecision::NotAuthorized => AuthResult::fail(ReasonCode::NotAuthorized),
            })
        })
    }

    fn authorize_publish<'a>(
        &'a self,
        client_id: &str,
        user_id: Option<&'a str>,
        topic: &'a str,
    ) -> BoxFuture<'a, bool> {
        let allowed = self.0.may_publish(client_id, user_id, topic);
        Box::pin(async move { allowed })
    }

    fn authorize_subscribe<'a>(
        &'a self,
        client_id: &str,
        user_id: Option<&'a str>,
        topic_filter: &'a str,
    ) -> BoxFuture<'a, bool> {
        let allowed = self.0.may_subscribe(client_id, user_id, topic_filter);
        Box::pin(async move { allowed })
    }
}
