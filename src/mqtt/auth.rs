//! Who may connect, publish and subscribe: the [`Authorizer`] trait (the
//! fleet module implements it with device credentials), which the engine
//! asks at CONNECT, at each PUBLISH and will, and per SUBSCRIBE filter.
//! A transport that verified a client certificate (TLS) hands its identity
//! to the engine with the stream, and the engine passes it on at CONNECT.

/// Decides connections and per-topic access. Called on the client's task:
/// keep it quick and never block on I/O.
pub trait Authorizer: Send + Sync + 'static {
    /// A CONNECT. `client_id` is as the client sent it: empty when it left
    /// the id to the server (MQTT 5, or 3.1.1 with a clean session), which
    /// assigns a fresh `auto-…` id that takes no session over; the other
    /// two methods see the assigned id. `user` in [`AuthDecision::Allow`]
    /// is what the other two methods (and the client events) see as the
    /// user; a persistent session resumes only for the same user.
    fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> AuthDecision;
    /// A CONNECT on a transport that verified a client certificate (or
    /// none, `cert` = `None`). The default ignores the certificate.
    fn authenticate_peer(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        cert: Option<&PeerCert>,
    ) -> AuthDecision {
        let _ = cert;
        self.authenticate(client_id, username, password)
    }
    /// A PUBLISH (and a will). Denied: PUBACK/PUBREC 0x87 for QoS 1/2, a
    /// silent drop for QoS 0.
    fn may_publish(&self, client_id: &str, user: Option<&str>, topic: &str) -> bool;
    /// One filter of a SUBSCRIBE. Denied: SUBACK 0x87 (v5) or 0x80 (3.1.1).
    fn may_subscribe(&self, client_id: &str, user: Option<&str>, filter: &str) -> bool;
}

/// The answer to a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Admitted.
    Allow {
        /// Who the client is, for the other checks and the events.
        user: Option<String>,
    },
    /// CONNACK 0x86 (v5) / 4 (3.1.1): bad user name or password.
    BadCredentials,
    /// CONNACK 0x87 (v5) / 5 (3.1.1): not authorized.
    NotAuthorized,
    /// CONNACK 0x85 (v5) / 2 (3.1.1): the client id is not one this user
    /// may take (a device connects only under its own id).
    ClientIdNotValid,
}

/// The identity in a client certificate the transport verified (chain,
/// validity, revocation): its subject's common name and serial number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The subject's common name.
    pub common_name: String,
    /// Lowercase hex of the serial number's bytes.
    pub serial: String,
}
