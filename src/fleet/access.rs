//! MQTT access for `--mqtt-auth devices`: who may connect (device
//! credentials, or the admin credential back ends use) and which topics each
//! may use.
//!
//! - A device (username = its id) may publish under `devices/{id}/...`
//!   except its own command topics, and subscribe only to
//!   `devices/{id}/commands/...`.
//! - A device in another dialect may also publish on the topics its codec
//!   reads (the filters the codec declared) and subscribe to a filter that
//!   matches where its commands go in that dialect; the decoders take from
//!   a device only events about itself.
//! - The admin may publish and subscribe anywhere.
//! - Suspended and decommissioned devices are refused at CONNECT (not
//!   authorized); an unknown device or a wrong secret is a bad user name or
//!   password.
//! - A client that presented a verified certificate (TLS) is the device its
//!   subject common name names, no password needed; with `--mqtt-auth
//!   certificates` a device must present one (the admin still logs in with
//!   its password). A certificate of a deleted, suspended or decommissioned
//!   device is not authorized, counted and logged.

use std::sync::{Arc, OnceLock};

use super::{AuthOutcome, Fleet, WeakFleet};
use crate::mqtt::{AuthDecision, Authorizer, PeerCert};
use crate::ratelimit::warn_limited;
use crate::transport::{Refusal, TlsStats};

/// The admin user name.
pub(crate) const ADMIN_USER: &str = "admin";

pub(crate) struct DeviceAccess {
    // Set once the fleet is open; the broker starts first and refuses
    // everyone in the few milliseconds before. Weak: the fleet holds the
    // broker, which holds this.
    fleet: OnceLock<WeakFleet>,
    admin_password: String,
    /// Devices must present a certificate (`--mqtt-auth certificates`).
    require_cert: bool,
    stats: Arc<TlsStats>,
}

impl DeviceAccess {
    pub(crate) fn new(
        admin_password: String,
        require_cert: bool,
        stats: Arc<TlsStats>,
    ) -> Arc<Self> {
        Arc::new(Self {
            fleet: OnceLock::new(),
            admin_password,
            require_cert,
            stats,
        })
    }

    fn refuse(&self, reason: Refusal, device: &str) -> AuthDecision {
        self.stats.refused(reason);
        warn_limited!(
            device,
            reason = reason.as_str(),
            "MQTT device certificate refused at CONNECT"
        );
        AuthDecision::NotAuthorized
    }

    pub(crate) fn attach(&self, fleet: &Fleet) {
        let _ = self.fleet.set(fleet.downgrade());
    }

    fn fleet(&self) -> Option<Fleet> {
        self.fleet.get()?.upgrade()
    }
}

/// A device connects under its own id, or under none: the broker then
/// assigns a fresh one, which takes no other client's session over.
fn own_id(client_id: &str, device: &str) -> bool {
    client_id.is_empty() || client_id == device
}

impl Authorizer for DeviceAccess {
    fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> AuthDecision {
        let (Some(username), Some(password)) = (username, password) else {
            return AuthDecision::NotAuthorized;
        };
        if username == ADMIN_USER {
            return if constant_time_eq(password, self.admin_password.as_bytes()) {
                AuthDecision::Allow {
                    user: Some(ADMIN_USER.to_string()),
                }
            } else {
                AuthDecision::BadCredentials
            };
        }
        let Some(fleet) = self.fleet() else {
            return AuthDecision::NotAuthorized;
        };
        match fleet.authenticate(username, password) {
            // Its own id only (or one the broker assigns): another
            // device's id would take that device's session and
            // connectivity over.
            AuthOutcome::Ok if !own_id(client_id, username) => AuthDecision::ClientIdNotValid,
            AuthOutcome::Ok => AuthDecision::Allow {
                user: Some(username.to_string()),
            },
            AuthOutcome::Unknown | AuthOutcome::WrongSecret => AuthDecision::BadCredentials,
            AuthOutcome::NotAllowed => AuthDecision::NotAuthorized,
        }
    }

    fn authenticate_peer(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        cert: Option<&PeerCert>,
    ) -> AuthDecision {
        if username == Some(ADMIN_USER) {
            return self.authenticate(client_id, username, password);
        }
        let Some(cert) = cert else {
            if self.require_cert {
                return self.refuse(Refusal::CertificateRequired, username.unwrap_or(client_id));
            }
            return self.authenticate(client_id, username, password);
        };
        let device = cert.common_name.as_str();
        if username.is_some_and(|u| u != device) {
            // Another device's name over this device's certificate.
            return AuthDecision::NotAuthorized;
        }
        let Some(fleet) = self.fleet() else {
            return AuthDecision::NotAuthorized;
        };
        match fleet.authenticate_cert(device) {
            AuthOutcome::Ok if !own_id(client_id, device) => AuthDecision::ClientIdNotValid,
            AuthOutcome::Ok => AuthDecision::Allow {
                user: Some(device.to_string()),
            },
            AuthOutcome::NotAllowed => self.refuse(Refusal::DeviceNotActive, device),
            AuthOutcome::Unknown | AuthOutcome::WrongSecret => {
                self.refuse(Refusal::UnknownDevice, device)
            }
        }
    }

    fn may_publish(&self, _client_id: &str, user: Option<&str>, topic: &str) -> bool {
        match user {
            Some(ADMIN_USER) => true,
            Some(device) => match device_subtopic(device, topic) {
                Some(rest) => !(rest == "commands" || rest.starts_with("commands/")),
                None => self
                    .fleet()
                    .is_some_and(|f| f.dialect_may_publish(device, topic)),
            },
            None => false,
        }
    }

    fn may_subscribe(&self, _client_id: &str, user: Option<&str>, filter: &str) -> bool {
        match user {
            Some(ADMIN_USER) => true,
            Some(device) => match device_subtopic(device, filter) {
                Some(rest) => {
                    rest == "commands/#" || rest == "commands/+" || rest.starts_with("commands/")
                }
                None => self
                    .fleet()
                    .is_some_and(|f| f.dialect_may_subscribe(device, filter)),
            },
            None => false,
        }
    }
}

/// The part of `topic` after `devices/{device}/`.
fn device_subtopic<'a>(device: &str, topic: &'a str) -> Option<&'a str> {
    topic
        .strip_prefix("devices/")?
        .strip_prefix(device)?
        .strip_prefix('/')
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_stay_in_their_own_topics() {
        let access = DeviceAccess::new("pw".into(), false, Default::default());
        let a = Some("dev-1");
        assert!(access.may_publish("c", a, "devices/dev-1/telemetry/t"));
        assert!(access.may_publish("c", a, "devices/dev-1/acks/42"));
        assert!(!access.may_publish("c", a, "devices/dev-2/telemetry/t"));
        assert!(!access.may_publish("c", a, "devices/dev-10/telemetry/t"));
        assert!(!access.may_publish("c", a, "devices/dev-1/commands/42"));
        assert!(!access.may_publish("c", a, "other/topic"));
        assert!(access.may_subscribe("c", a, "devices/dev-1/commands/#"));
        assert!(!access.may_subscribe("c", a, "devices/+/commands/#"));
        assert!(!access.may_subscribe("c", a, "devices/dev-1/telemetry/#"));
        assert!(!access.may_subscribe("c", a, "#"));
        assert!(access.may_subscribe("c", Some(ADMIN_USER), "#"));
        assert_eq!(
            access.authenticate("c", Some("admin"), Some(b"pw")),
            AuthDecision::Allow {
                user: Some("admin".into())
            }
        );
        assert_eq!(
            access.authenticate("c", Some("admin"), Some(b"no")),
            AuthDecision::BadCredentials
        );
        assert_eq!(
            access.authenticate("c", None, None),
            AuthDecision::NotAuthorized
        );
    }
}
