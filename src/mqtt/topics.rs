//! Every MQTT topic iotmock uses, built in one place.

/// `devices/{id}/telemetry/{sensor}`: one reading.
pub fn telemetry(device: &str, sensor: &str) -> String {
    let mut topic = String::with_capacity(20 + device.len() + sensor.len());
    topic.push_str("devices/");
    topic.push_str(device);
    topic.push_str("/telemetry/");
    topic.push_str(sensor);
    topic
}

/// `devices/{id}/status`: retained `online` / `offline`.
pub(crate) fn status(device: &str) -> String {
    format!("devices/{device}/status")
}

/// `devices/{id}/commands/{command_id}`: a command to a device.
pub(crate) fn command(device: &str, command_id: &str) -> String {
    format!("devices/{device}/commands/{command_id}")
}

/// `devices/{id}/acks/{command_id}`: a device's answer to a command.
pub(crate) fn ack(device: &str, command_id: &str) -> String {
    format!("devices/{device}/acks/{command_id}")
}

/// `edge/{node}/uplink/{kind}`: what an edge node syncs to the cloud.
pub(crate) fn edge_uplink(node: &str, kind: &str) -> String {
    format!("edge/{node}/uplink/{kind}")
}

/// Checks a topic name for publishing: not empty, no wildcards, no NUL.
pub(crate) fn valid_topic_name(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("the topic is empty");
    }
    if topic.len() > 65_535 {
        return Err("the topic is longer than 65,535 bytes");
    }
    if topic.contains(['+', '#']) {
        return Err("a topic to publish to cannot contain the wildcards + or #");
    }
    if topic.contains('\0') {
        return Err("the topic contains a NUL character");
    }
    Ok(())
}

/// Checks a subscription filter: not empty, `#` only as the last level,
/// `+` and `#` only as whole levels.
pub(crate) fn valid_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("the filter is empty");
    }
    if filter.contains('\0') {
        return Err("the filter contains a NUL character");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("# must be a whole level and the last one (e.g. devices/#)");
        }
        if level.contains('+') && *level != "+" {
            return Err("+ must be a whole level (e.g. devices/+/status)");
        }
    }
    Ok(())
}

/// Whether `topic` matches the subscription filter `filter` (`+` one level,
/// `#` the rest; `$` topics only match filters that name them). Runs on
/// every message for every tap and journal query, so it walks the bytes
/// once instead of splitting both strings.
pub(crate) fn matches(filter: &str, topic: &str) -> bool {
    let (f, t) = (filter.as_bytes(), topic.as_bytes());
    if t.first() == Some(&b'$') && f.first() != Some(&b'$') {
        return false;
    }
    let (mut fi, mut ti) = (0, 0);
    loop {
        let f_end = level_end(f, fi);
        let level = &f[fi..f_end];
        if level == b"#" {
            return true;
        }
        let t_end = level_end(t, ti);
        if level != b"+" && level != &t[ti..t_end] {
            return false;
        }
        match (f_end == f.len(), t_end == t.len()) {
            (true, true) => return true,
            (true, false) => return false,
            // The topic ended: only a `#` level follows (`a/#` matches `a`).
            (false, true) => return &f[f_end + 1..level_end(f, f_end + 1)] == b"#",
            (false, false) => (fi, ti) = (f_end + 1, t_end + 1),
        }
    }
}

/// Where the level that starts at `from` ends (its `/` or the end).
fn level_end(s: &[u8], from: usize) -> usize {
    s[from..]
        .iter()
        .position(|&b| b == b'/')
        .map_or(s.len(), |p| from + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_topics() {
        assert_eq!(
            telemetry("d-1", "temperature"),
            "devices/d-1/telemetry/temperature"
        );
        assert_eq!(status("d-1"), "devices/d-1/status");
    }

    #[test]
    fn filters_match_like_a_broker() {
        assert!(matches("devices/#", "devices/a/telemetry/t"));
        assert!(matches("devices/+/telemetry/+", "devices/a/telemetry/t"));
        assert!(!matches("devices/+/status", "devices/a/telemetry/t"));
        assert!(matches("#", "a"));
        assert!(!matches("#", "$SYS/x"));
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("a/#", "a"));
    }

    /// The matcher agrees with the rules read level by level, for every
    /// filter and topic of up to three levels from a small alphabet
    /// (empty levels, `$` levels, wildcards in each place).
    #[test]
    fn matching_agrees_with_the_rules_level_by_level() {
        fn by_levels(filter: &str, topic: &str) -> bool {
            if topic.starts_with('$') && !filter.starts_with('$') {
                return false;
            }
            let (mut f, mut t) = (filter.split('/'), topic.split('/'));
            loop {
                match (f.next(), t.next()) {
                    (Some("#"), _) => return true,
                    (Some("+"), Some(_)) => {}
                    (Some(a), Some(b)) if a == b => {}
                    (None, None) => return true,
                    _ => return false,
                }
            }
        }
        fn joined(alphabet: &[&str], max: usize) -> Vec<String> {
            let mut all: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
            let mut last = all.clone();
            for _ in 1..max {
                let next: Vec<String> = last
                    .iter()
                    .flat_map(|p| alphabet.iter().map(move |l| format!("{p}/{l}")))
                    .collect();
                all.extend(next.iter().cloned());
                last = next;
            }
            all
        }
        let topics = joined(&["", "a", "b", "ab", "$s"], 3);
        let filters = joined(&["", "a", "b", "ab", "$s", "+", "#"], 3);
        let mut checked = 0;
        for f in &filters {
            for t in &topics {
                assert_eq!(matches(f, t), by_levels(f, t), "filter {f:?} topic {t:?}");
                checked += 1;
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn filters_are_validated() {
        assert!(valid_filter("devices/+/telemetry/#").is_ok());
        assert!(valid_filter("#").is_ok());
        assert!(valid_filter("a/#/b").is_err());
        assert!(valid_filter("a/b#").is_err());
        assert!(valid_filter("a/x+").is_err());
        assert!(valid_filter("").is_err());
    }
}
