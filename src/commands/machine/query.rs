//! Reads of the state machine for the API: one command, a page of them, a
//! fleet command's outcome, counts by state. Nothing here changes state.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Counts, Machine};
use crate::commands::model::*;

impl Machine {
    pub(crate) fn view(&self, id: &str) -> Option<&CommandView> {
        self.commands.get(id).map(|r| &r.view)
    }

    /// The command's id as the machine holds it, and its state.
    pub(crate) fn status(&self, id: &str) -> Option<(Arc<str>, CommandStatus)> {
        self.commands
            .get_key_value(id)
            .map(|(k, r)| (k.clone(), r.view.status))
    }

    /// The members of a fleet command still known, with their states.
    pub(crate) fn batch_members(&self, id: &str) -> Option<Vec<(Arc<str>, CommandStatus)>> {
        let batch = self.batches.get(id)?;
        Some(
            batch
                .ids
                .iter()
                .filter_map(|cid| self.status(cid))
                .collect(),
        )
    }

    /// A fleet command's per-device outcomes and summary.
    pub(crate) fn batch(&self, id: &str) -> Option<BatchView> {
        let batch = self.batches.get(id)?;
        let mut summary = BTreeMap::new();
        let mut commands = Vec::with_capacity(batch.ids.len());
        let mut done = true;
        for cid in &batch.ids {
            // Evicted members are gone; the summary counts what is known.
            let Some(rec) = self.commands.get(cid) else {
                continue;
            };
            let v = &rec.view;
            *summary.entry(v.status.as_str()).or_insert(0) += 1;
            done &= v.status.is_final();
            commands.push(BatchItem {
                device: v.device.clone(),
                id: v.id.clone(),
                status: v.status,
                attempts: v.attempts,
                result: v.result.clone(),
                reason: v.reason.clone(),
            });
        }
        Some(BatchView {
            id: id.to_string(),
            name: batch.name.clone(),
            summary,
            total: batch.ids.len() as u64,
            done,
            commands,
        })
    }

    /// Up to `limit` commands matching `filter` in creation order, from
    /// the cursor `start` (a creation sequence number) on.
    pub(crate) fn list(&self, filter: &CommandFilter, start: u64, limit: usize) -> CommandPage {
        let mut items = Vec::new();
        let mut next_cursor = None;
        for (seq, id) in self.order.range(start..) {
            let v = &self.commands[id].view;
            let keep = filter.device.as_ref().is_none_or(|d| *d == v.device)
                && filter.status.is_none_or(|s| s == v.status)
                && filter.name.as_ref().is_none_or(|n| *n == v.name)
                && filter
                    .batch
                    .as_ref()
                    .is_none_or(|b| v.batch.as_ref() == Some(b));
            if !keep {
                continue;
            }
            if items.len() == limit {
                next_cursor = Some(seq.to_string());
                break;
            }
            items.push(v.clone());
        }
        CommandPage { items, next_cursor }
    }

    /// Commands in each state now (every state listed).
    pub(crate) fn by_status(&self) -> BTreeMap<&'static str, u64> {
        let mut by_status: BTreeMap<&'static str, u64> =
            CommandStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for rec in self.commands.values() {
            *by_status.entry(rec.view.status.as_str()).or_insert(0) += 1;
        }
        by_status
    }

    pub(crate) fn counts(&self) -> Counts {
        self.counts
    }
}
