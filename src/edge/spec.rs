//! What an edge node is made of: the body of `POST /edge-nodes` and a
//! scenario's `[[edge_node]]` table, with named defaults, and its
//! validation into a form the node runs.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, EdgeNodeId};
use crate::plugin::CallBudget;

/// Default batching window, simulated ms.
pub(super) const DEFAULT_WINDOW_MS: u64 = 1000;
/// Default uplink buffer: messages kept while the uplink is down.
pub(super) const DEFAULT_UPLINK_CAPACITY: usize = 10_000;
/// Default input queue: readings waiting for the next window.
pub(super) const DEFAULT_QUEUE: usize = 10_000;
/// Default time budget of one batch through the whole pipeline.
pub(super) const DEFAULT_TIME_MS: u64 = 250;
/// Default memory budget of one rule instance.
pub(super) const DEFAULT_MEMORY_MIB: u64 = 16;
/// Most rules in one pipeline.
pub(super) const MAX_RULES: usize = 16;

/// An edge node as declared.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EdgeNodeSpec {
    /// 1 to 128 characters from A-Z a-z 0-9 . _ - (a topic level).
    pub id: String,
    /// Which devices feed the node.
    pub devices: DeviceSelector,
    /// The pipeline, in order: each rule's forwarded readings are the next
    /// rule's input.
    pub rules: Vec<RuleSpec>,
    /// Batching window, simulated ms (default 1,000).
    #[serde(default = "default_window")]
    pub window_ms: u64,
    /// What is kept while the uplink is down.
    #[serde(default)]
    pub buffer: UplinkBufferSpec,
    /// Limits of the node's processing.
    #[serde(default)]
    pub budget: BudgetSpec,
    /// What happens to a batch when a rule fails.
    #[serde(default)]
    pub on_error: OnError,
}

fn default_window() -> u64 {
    DEFAULT_WINDOW_MS
}

/// Exactly one of `ids`, `tag` or `group`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceSelector {
    /// These devices, whether or not they exist yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// The devices carrying this tag, as devices are created, deleted or
    /// retagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The devices in this group, as devices are created, deleted or
    /// regrouped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl DeviceSelector {
    /// Whether a device with `tags` and `group` belongs, for a tag or group
    /// selector (a list of ids is fixed: always `false` here).
    pub(crate) fn follows(&self, tags: &[String], group: Option<&str>) -> bool {
        if let Some(tag) = &self.tag {
            return tags.iter().any(|t| t == tag);
        }
        if let Some(wanted) = &self.group {
            return group == Some(wanted.as_str());
        }
        false
    }
}

/// One pipeline stage.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSpec {
    /// A loaded edge-rule plugin.
    pub plugin: String,
    /// Given to the plugin as JSON (default `{}`).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// The store-and-forward buffer of the uplink.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UplinkBufferSpec {
    /// Messages kept while the uplink is down (default 10,000; 0 keeps none).
    #[serde(default = "default_uplink_capacity")]
    pub capacity: usize,
    /// Which message gives way when it is full.
    #[serde(default)]
    pub policy: BufferPolicy,
}

fn default_uplink_capacity() -> usize {
    DEFAULT_UPLINK_CAPACITY
}

impl Default for UplinkBufferSpec {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_UPLINK_CAPACITY,
            policy: BufferPolicy::DropOldest,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BufferPolicy {
    /// Keep the newest messages (default).
    #[default]
    #[serde(alias = "drop-oldest")]
    DropOldest,
    /// Keep the oldest messages; new ones are dropped.
    #[serde(alias = "drop-newest")]
    DropNewest,
}

/// A node's resource budget.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BudgetSpec {
    /// Wall time one batch may take through the whole pipeline, ms
    /// (default 250); a rule still running at the end is stopped.
    #[serde(default = "default_time")]
    pub time_ms: u64,
    /// Largest linear memory of one rule instance, MiB (default 16).
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Readings waiting for the next window (default 10,000); when full,
    /// new readings are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_time() -> u64 {
    DEFAULT_TIME_MS
}

fn default_memory() -> u64 {
    DEFAULT_MEMORY_MIB
}

fn default_queue() -> usize {
    DEFAULT_QUEUE
}

impl Default for BudgetSpec {
    fn default() -> Self {
        Self {
            time_ms: DEFAULT_TIME_MS,
            memory_mib: DEFAULT_MEMORY_MIB,
            queue: DEFAULT_QUEUE,
        }
    }
}

/// What happens to a batch when a rule traps, runs out of time or
/// memory, or fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnError {
    /// Publish the batch's readings on the uplink as they came in, marked
    /// `"unprocessed": true` (default).
    #[default]
    PassThrough,
    /// Keep the batch at the head of the input queue and retry it with the
    /// next window.
    Hold,
}

/// A validated rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub plugin: String,
    pub config: Arc<str>,
}

impl EdgeNodeSpec {
    /// Checks everything that does not need the plugin host or the fleet.
    pub(crate) fn check(&self) -> Result<(), String> {
        EdgeNodeId::parse(self.id.as_str()).map_err(|e| format!("id: {e}"))?;
        let chosen = [
            self.devices.ids.is_some(),
            self.devices.tag.is_some(),
            self.devices.group.is_some(),
        ]
        .iter()
        .filter(|c| **c)
        .count();
        if chosen != 1 {
            return Err(
                "devices: give exactly one of \"ids\" (a list), \"tag\" or \"group\"".into(),
            );
        }
        if let Some(ids) = &self.devices.ids {
            if ids.is_empty() {
                return Err("devices.ids: list at least one device id".into());
            }
            for id in ids {
                DeviceId::parse(id.as_str()).map_err(|e| format!("devices.ids: {e}"))?;
            }
        }
        if self.rules.is_empty() || self.rules.len() > MAX_RULES {
            return Err(format!(
                "rules: give 1 to {MAX_RULES} rules ({{\"plugin\": NAME, \"config\": {{..}}}}), got {}",
                self.rules.len()
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.config.is_object() {
                return Err(format!("rules[{i}].config must be a JSON object"));
            }
        }
        if !(1..=3_600_000).contains(&self.window_ms) {
            return Err(format!(
                "window_ms must be 1 to 3,600,000 (an hour), got {}",
                self.window_ms
            ));
        }
        if self.buffer.capacity > 1_000_000 {
            return Err(format!(
                "buffer.capacity must be at most 1,000,000, got {}",
                self.buffer.capacity
            ));
        }
        if !(1..=60_000).contains(&self.budget.time_ms) {
            return Err(format!(
                "budget.time_ms must be 1 to 60,000, got {}",
                self.budget.time_ms
            ));
        }
        if !(1..=1024).contains(&self.budget.memory_mib) {
            return Err(format!(
                "budget.memory_mib must be 1 to 1024, got {}",
                self.budget.memory_mib
            ));
        }
        if !(1..=1_000_000).contains(&self.budget.queue) {
            return Err(format!(
                "budget.queue must be 1 to 1,000,000, got {}",
                self.budget.queue
            ));
        }
        Ok(())
    }

    pub(crate) fn rules(&self) -> Vec<Rule> {
        self.rules
            .iter()
            .map(|r| Rule {
                plugin: r.plugin.clone(),
                config: Arc::from(r.config.to_string()),
            })
            .collect()
    }

    /// The budget of one rule call when `left` of the batch's time remains.
    pub(crate) fn call_budget(&self, left: Duration) -> CallBudget {
        CallBudget {
            timeout: left,
            max_memory_bytes: (self.budget.memory_mib as usize) << 20,
        }
    }
}
