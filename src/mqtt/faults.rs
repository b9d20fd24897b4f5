//! Packet-level faults, on purpose: rules that drop, delay, duplicate,
//! reorder or withhold packets, disconnect clients, refuse connections or
//! throttle a client's bandwidth, so a test can show that firmware retries
//! a lost PUBACK or that a back end de-duplicates a redelivery.
//!
//! A rule matches on client id and user (`*` wildcards), topic filter,
//! direction (`in`: client to broker, `out`: broker to client) and packet
//! type; `after` skips its first matches, `count` caps how often it fires,
//! `probability` draws from the rule's own stream derived from the
//! server's seed and the rule's id, so the same run faults the same
//! packets. Every firing is counted on the rule and kept in a bounded log
//! ([`LOG_CAPACITY`] entries, oldest evicted and counted).
//!
//! The connection code asks [`Faults::on`] per packet only while at least
//! one rule exists (one atomic load otherwise).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::Rng;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use super::codec::PacketKind;
use crate::clock::{rfc3339_ms, wall_ms};
use crate::random::DeviceRng;

/// Firings kept in the log.
pub(crate) const LOG_CAPACITY: usize = 10_000;

/// Which way a packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Direction {
    /// Client to broker.
    In,
    /// Broker to client.
    Out,
}

/// What a rule applies to; every field given must match.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultMatch {
    /// Client id pattern (`*` matches any run of characters).
    pub client: Option<String>,
    /// User name pattern (`*` wildcards).
    pub user: Option<String>,
    /// Topic filter, for PUBLISH packets (`+` and `#`).
    pub topic: Option<String>,
    pub direction: Option<Direction>,
    pub packet: Option<PacketKind>,
}

/// What a rule does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FaultAction {
    /// The packet is lost (in: never handled; out: never written).
    Drop,
    /// The packet (and what follows it on that connection) waits
    /// `delay_ms` (+ up to `jitter_ms`) before it is written. Out only.
    Delay,
    /// The packet is written twice; a QoS 1/2 PUBLISH again with DUP. Out only.
    Duplicate,
    /// The packet is written after the next packet to the same client. Out only.
    Reorder,
    /// PUBACK, PUBREC, PUBCOMP or SUBACK is never sent. Out only.
    WithholdAck,
    /// The connection is closed (MQTT 5: DISCONNECT with `reason_code`,
    /// default 0x80) instead of handling or writing the packet.
    Disconnect,
    /// A CONNECT is answered with CONNACK `reason_code` (default 0x87;
    /// 3.1.1 clients get the matching return code).
    RefuseConnect,
    /// Writes to the client are paced to `bytes_per_sec`. Out only.
    Throttle,
}

/// A rule as a client asks for it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultSpec {
    #[serde(default, rename = "match")]
    pub matcher: FaultMatch,
    pub action: FaultAction,
    /// Chance of firing on a matching packet, 0–1 (default 1).
    pub probability: Option<f64>,
    /// Fire at most this many times.
    pub count: Option<u64>,
    /// Let this many matching packets pass first.
    #[serde(default)]
    pub after: u64,
    pub delay_ms: Option<u64>,
    pub jitter_ms: Option<u64>,
    pub reason_code: Option<u8>,
    pub bytes_per_sec: Option<u64>,
}

/// A rule as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct FaultRule {
    pub id: String,
    #[serde(rename = "match")]
    pub matcher: FaultMatch,
    pub action: FaultAction,
    pub probability: f64,
    pub count: Option<u64>,
    pub after: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
    /// Packets that matched.
    pub matched: u64,
    /// Times it fired.
    pub fired: u64,
}

/// One firing, as the log keeps it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct FaultEvent {
    pub seq: u64,
    /// Wall time, RFC 3339.
    pub at: String,
    pub rule: String,
    pub action: FaultAction,
    pub client_id: String,
    pub direction: Direction,
    pub packet: PacketKind,
    pub topic: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FaultError {
    #[error("{0}")]
    Invalid(String),
    #[error("no fault rule {0}; list them with GET /api/v1/mqtt/faults")]
    NotFound(String),
}

struct Rule {
    view: FaultRule,
    rng: Pcg64Mcg,
}

/// What the connection must do with a packet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Verdict {
    Pass,
    Drop,
    Delay(u64),
    Duplicate,
    Reorder,
    Disconnect(u8),
    RefuseConnect(u8),
    Throttle(u64),
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    next_id: u64,
    log: VecDeque<FaultEvent>,
    log_seq: u64,
    evicted: u64,
}

pub(crate) struct Faults {
    seed: u64,
    active: AtomicBool,
    // A std mutex: held to match and draw, never across an await.
    state: Mutex<State>,
}

/// The packet being decided on.
pub(crate) struct Packet<'a> {
    pub client_id: &'a str,
    pub user: Option<&'a str>,
    pub direction: Direction,
    pub kind: PacketKind,
    pub topic: Option<&'a str>,
}

impl Faults {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            seed,
            active: AtomicBool::new(false),
            state: Mutex::default(),
        }
    }

    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, spec: FaultSpec) -> Result<FaultRule, FaultError> {
        let p = spec.probability.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&p) {
            return Err(FaultError::Invalid(format!(
                "probability {p} is outside 0..=1"
            )));
        }
        if let Some(t) = &spec.matcher.topic {
            super::topics::valid_filter(t)
                .map_err(|e| FaultError::Invalid(format!("match.topic: {e}")))?;
        }
        use FaultAction as A;
        let out_only = matches!(
            spec.action,
            A::Delay | A::Duplicate | A::Reorder | A::WithholdAck | A::Throttle
        );
        if out_only && spec.matcher.direction == Some(Direction::In) {
            return Err(FaultError::Invalid(format!(
                "{:?} applies to packets the broker sends: use \"direction\": \"out\"",
                spec.action
            )));
        }
        match spec.action {
            A::Delay if spec.delay_ms.is_none() => {
                return Err(FaultError::Invalid(
                    "delay needs \"delay_ms\" (and optionally \"jitter_ms\")".into(),
                ));
            }
            A::Throttle if spec.bytes_per_sec.is_none_or(|b| b == 0) => {
                return Err(FaultError::Invalid(
                    "throttle needs \"bytes_per_sec\" above 0".into(),
                ));
            }
            A::RefuseConnect
                if spec
                    .matcher
                    .packet
                    .is_some_and(|k| k != PacketKind::Connect) =>
            {
                return Err(FaultError::Invalid(
                    "refuse_connect applies to CONNECT packets only".into(),
                ));
            }
            _ => {}
        }
        let mut st = self.state.lock().unwrap();
        st.next_id += 1;
        let id = format!("f-{}", st.next_id);
        let mut matcher = spec.matcher;
        match spec.action {
            A::RefuseConnect => {
                matcher.packet = Some(PacketKind::Connect);
                matcher.direction = Some(Direction::In);
            }
            a if out_only || a == A::WithholdAck => matcher.direction = Some(Direction::Out),
            _ => {}
        }
        let view = FaultRule {
            id: id.clone(),
            matcher,
            action: spec.action,
            probability: p,
            count: spec.count,
            after: spec.after,
            delay_ms: spec.delay_ms,
            jitter_ms: spec.jitter_ms,
            reason_code: spec.reason_code,
            bytes_per_sec: spec.bytes_per_sec,
            matched: 0,
            fired: 0,
        };
        let mut stream = DeviceRng::derive(self.seed, &id, "mqtt-fault");
        st.rules.push(Rule {
            view: view.clone(),
            rng: stream.fork(),
        });
        self.active.store(true, Ordering::Relaxed);
        Ok(view)
    }

    pub(crate) fn list(&self) -> Vec<FaultRule> {
        let st = self.state.lock().unwrap();
        st.rules.iter().map(|r| r.view.clone()).collect()
    }

    /// The log after `since` (sequence numbers), and how many were evicted.
    pub(crate) fn log(&self, since: u64) -> (Vec<FaultEvent>, u64) {
        let st = self.state.lock().unwrap();
        (
            st.log.iter().filter(|e| e.seq > since).cloned().collect(),
            st.evicted,
        )
    }

    pub(crate) fn remove(&self, id: &str) -> Result<(), FaultError> {
        let mut st = self.state.lock().unwrap();
        let before = st.rules.len();
        st.rules.retain(|r| r.view.id != id);
        if st.rules.len() == before {
            return Err(FaultError::NotFound(id.to_string()));
        }
        self.active.store(!st.rules.is_empty(), Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn clear(&self) {
        let mut st = self.state.lock().unwrap();
        st.rules.clear();
        self.active.store(false, Ordering::Relaxed);
    }

    /// Decides on one packet: the first rule that fires wins.
    pub(crate) fn on(&self, p: &Packet<'_>) -> Verdict {
        let mut st = self.state.lock().unwrap();
        let st = &mut *st;
        for rule in &mut st.rules {
            let v = &mut rule.view;
            let m = &v.matcher;
            if m.direction.is_some_and(|d| d != p.direction)
                || m.packet.is_some_and(|k| k != p.kind)
                || m.client.as_deref().is_some_and(|c| !glob(c, p.client_id))
                || m.user
                    .as_deref()
                    .is_some_and(|u| !p.user.is_some_and(|pu| glob(u, pu)))
                || m.topic
                    .as_deref()
                    .is_some_and(|f| !p.topic.is_some_and(|t| super::topics::matches(f, t)))
            {
                continue;
            }
            if v.action == FaultAction::WithholdAck
                && !matches!(
                    p.kind,
                    PacketKind::PubAck
                        | PacketKind::PubRec
                        | PacketKind::PubComp
                        | PacketKind::Suback
                )
            {
                continue;
            }
            v.matched += 1;
            if v.matched <= v.after || v.count.is_some_and(|c| v.fired >= c) {
                continue;
            }
            if v.probability < 1.0 && rule.rng.random::<f64>() >= v.probability {
                continue;
            }
            v.fired += 1;
            let verdict = match v.action {
                FaultAction::Drop | FaultAction::WithholdAck => Verdict::Drop,
                FaultAction::Delay => {
                    let jitter = v.jitter_ms.unwrap_or(0);
                    let extra = if jitter > 0 {
                        rule.rng.random_range(0..=jitter)
                    } else {
                        0
                    };
                    Verdict::Delay(v.delay_ms.unwrap_or(0) + extra)
                }
                FaultAction::Duplicate => Verdict::Duplicate,
                FaultAction::Reorder => Verdict::Reorder,
                FaultAction::Disconnect => Verdict::Disconnect(v.reason_code.unwrap_or(0x80)),
                FaultAction::RefuseConnect => Verdict::RefuseConnect(v.reason_code.unwrap_or(0x87)),
                FaultAction::Throttle => Verdict::Throttle(v.bytes_per_sec.unwrap_or(1)),
            };
            st.log_seq += 1;
            if st.log.len() == LOG_CAPACITY {
                st.log.pop_front();
                st.evicted += 1;
            }
            st.log.push_back(FaultEvent {
                seq: st.log_seq,
                at: rfc3339_ms(wall_ms()),
                rule: v.id.clone(),
                action: v.action,
                client_id: p.client_id.to_string(),
                direction: p.direction,
                packet: p.kind,
                topic: p.topic.map(str::to_string),
            });
            tracing::debug!(rule = %v.id, action = ?v.action, client_id = p.client_id, packet = ?p.kind, "MQTT fault fired");
            return verdict;
        }
        Verdict::Pass
    }
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let mut rest = s;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> FaultSpec {
        serde_json::from_value(json).unwrap()
    }

    fn out_publish<'a>(client: &'a str, topic: &'a str) -> Packet<'a> {
        Packet {
            client_id: client,
            user: None,
            direction: Direction::Out,
            kind: PacketKind::Publish,
            topic: Some(topic),
        }
    }

    #[test]
    fn globs() {
        assert!(glob("dev-*", "dev-1"));
        assert!(glob("*-1", "dev-1"));
        assert!(glob("d*v*1", "dev-1"));
        assert!(!glob("dev-*", "sensor"));
        assert!(glob("exact", "exact"));
    }

    #[test]
    fn after_count_and_matching() {
        let f = Faults::new(7);
        f.add(spec(serde_json::json!({
            "match": {"client": "dev-*", "topic": "t/#", "packet": "publish"},
            "action": "drop", "after": 1, "count": 2
        })))
        .unwrap();
        let p = out_publish("dev-1", "t/a");
        let got: Vec<Verdict> = (0..5).map(|_| f.on(&p)).collect();
        use Verdict::*;
        assert_eq!(got, [Pass, Drop, Drop, Pass, Pass]);
        assert_eq!(f.on(&out_publish("other", "t/a")), Pass);
        assert_eq!(f.list()[0].fired, 2);
        assert_eq!(f.log(0).0.len(), 2);
    }

    #[test]
    fn draws_repeat_under_the_same_seed() {
        let run = |seed| {
            let f = Faults::new(seed);
            f.add(spec(
                serde_json::json!({"action": "drop", "probability": 0.5}),
            ))
            .unwrap();
            (0..64)
                .map(|_| f.on(&out_publish("c", "t")) == Verdict::Drop)
                .collect::<Vec<bool>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn bad_rules_say_what_to_fix() {
        let f = Faults::new(0);
        let e = f
            .add(spec(serde_json::json!({"action": "delay"})))
            .unwrap_err();
        assert!(e.to_string().contains("delay_ms"));
        let e = f
            .add(spec(
                serde_json::json!({"action": "duplicate", "match": {"direction": "in"}}),
            ))
            .unwrap_err();
        assert!(e.to_string().contains("out"));
    }
}
