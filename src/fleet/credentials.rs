//! Device secrets: made by a CSPRNG, shown once, stored only as a salted
//! hash.
//!
//! The hash is salted SHA-256, not a slow password hash: a secret is 128
//! random bits, not something a person chose, so guessing it is out of
//! reach either way, and provisioning 100,000 devices stays well under a
//! second.

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::hex::hex;

/// What is stored for a device's secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretHash {
    pub salt: [u8; 16],
    pub hash: [u8; 32],
}

/// A new secret (32 hex characters) and its stored form.
pub(crate) fn new_secret() -> (String, SecretHash) {
    let mut rng = rand::rng();
    let mut raw = [0u8; 16];
    rng.fill_bytes(&mut raw);
    let secret = hex(&raw);
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let hash = digest(&salt, secret.as_bytes());
    (secret, SecretHash { salt, hash })
}

impl SecretHash {
    /// Checks a presented password in time independent of where it differs.
    pub(crate) fn verify(&self, password: &[u8]) -> bool {
        let presented = digest(&self.salt, password);
        presented
            .iter()
            .zip(self.hash.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

fn digest(salt: &[u8; 16], password: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_verify_and_differ() {
        let (a, ha) = new_secret();
        let (b, hb) = new_secret();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(ha.verify(a.as_bytes()));
        assert!(!ha.verify(b.as_bytes()));
        assert!(!hb.verify(b""));
        assert_ne!(ha.salt, hb.salt);
    }
}
