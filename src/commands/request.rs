//! A command request's numbers, checked and defaulted once, before the
//! engine takes the lock: what a submit, a fleet command and a command a
//! back end publishes itself all go through. It does not look at devices.

use super::CommandError;
use super::model::*;

/// A request's numbers, checked and defaulted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checked {
    pub timeout_ms: u64,
    pub retries: u32,
    pub backoff_ms: u64,
    pub ttl_ms: u64,
    pub complete_on: CompleteOn,
}

pub(crate) fn check_request(r: &CommandRequest) -> Result<Checked, CommandError> {
    let invalid = |m: String| Err(CommandError::Invalid(m));
    if r.name.is_empty() || r.name.len() > 128 {
        return invalid("name: give the command a name of 1 to 128 characters".into());
    }
    if let Some(id) = &r.id
        && !valid_command_id(id)
    {
        return invalid(format!(
            "id: {id:?} is not a valid command id; use 1 to 64 characters from letters, digits, '-', '_' and '.'"
        ));
    }
    let timeout_ms = r.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=86_400_000).contains(&timeout_ms) {
        return invalid(format!(
            "timeout_ms: {timeout_ms} is out of range; use 1 to 86400000"
        ));
    }
    let retries = r.retries.unwrap_or(0);
    if retries > MAX_RETRIES {
        return invalid(format!(
            "retries: {retries} is too many; use 0 to {MAX_RETRIES}"
        ));
    }
    let backoff_ms = r.backoff_ms.unwrap_or(DEFAULT_BACKOFF_MS);
    if backoff_ms > MAX_BACKOFF_MS {
        return invalid(format!(
            "backoff_ms: {backoff_ms} is out of range; use 0 to {MAX_BACKOFF_MS}"
        ));
    }
    let ttl_ms = r.ttl_ms.unwrap_or(DEFAULT_TTL_MS);
    if ttl_ms > 30 * 86_400_000 {
        return invalid(format!(
            "ttl_ms: {ttl_ms} is out of range; use 0 to 2592000000 (30 days)"
        ));
    }
    Ok(Checked {
        timeout_ms,
        retries,
        backoff_ms,
        ttl_ms,
        complete_on: r.complete_on.unwrap_or_default(),
    })
}

fn valid_command_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked() {
        let ok = CommandRequest {
            name: "reboot".into(),
            ..Default::default()
        };
        assert!(check_request(&ok).is_ok());
        let bad = CommandRequest {
            name: "x".into(),
            retries: Some(99),
            ..Default::default()
        };
        let e = check_request(&bad).unwrap_err().to_string();
        assert!(e.contains("retries"), "{e}");
        let bad_id = CommandRequest {
            id: Some("a/b".into()),
            name: "x".into(),
            ..Default::default()
        };
        assert!(check_request(&bad_id).is_err());
    }
}
