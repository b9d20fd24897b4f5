//! Writes that come before an answer: a new command, a fleet command and
//! a cancel are stored before the API answers them and before anything
//! about them leaves the engine. When such a write fails nothing
//! half-done remains: new commands are taken back as if never submitted,
//! a cancel is undone, and the caller gets the store error (a 503). Other
//! changes are written as ordinary effects (`effects.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::effects::Effect;
use super::machine::Undo;
use super::model::CommandView;
use super::{CommandError, Inner};

/// One command's newest record among a list of effects.
type Row = (u64, u64, Option<i64>, Box<CommandView>);

impl Inner {
    /// Stores new commands (to `devices`) before anything about them
    /// leaves the engine: their newest records among `effects` are written
    /// now and taken out of the list. When the write fails the commands
    /// are taken back, the other effects are dropped, and the error is
    /// returned.
    pub(super) async fn store_created(
        &self,
        ids: &[Arc<str>],
        devices: &[String],
        batch: Option<&str>,
        effects: &mut Vec<Effect>,
    ) -> Result<(), CommandError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let wanted: HashSet<&str> = ids.iter().map(|id| &**id).collect();
        let mut records: HashMap<String, Row> = HashMap::with_capacity(ids.len());
        let mut rest = Vec::with_capacity(effects.len());
        for effect in effects.drain(..) {
            match effect {
                Effect::Persist {
                    seq,
                    version,
                    deadline,
                    view,
                } if wanted.contains(view.id.as_str()) => {
                    if records.get(&view.id).is_none_or(|r| version > r.1) {
                        records.insert(view.id.clone(), (seq, version, deadline, view));
                    }
                }
                other => rest.push(other),
            }
        }
        *effects = rest;
        let rows: Vec<_> = records.into_values().collect();
        let written = store.put_all(&rows).await;
        let Err(error) = written else {
            // Stored: a device that came online (or started polling)
            // during the write takes its queued commands now.
            let reach: Vec<(&String, bool)> =
                devices.iter().map(|d| (d, self.deliverable(d))).collect();
            let mut core = self.core.lock().unwrap();
            let now = self.clock.now_ms();
            core.machine.mark_stored(ids);
            for (device, reachable) in reach {
                if reachable {
                    core.machine.deliver_queued(device, now, effects);
                }
                effects.push(Effect::Poll {
                    device: device.clone(),
                });
            }
            core.signal(effects);
            return Ok(());
        };
        self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(commands = ids.len(), %error, "could not store new commands; they were not submitted");
        effects.clear();
        let mut core = self.core.lock().unwrap();
        core.machine.take_back(ids, batch);
        for id in ids {
            core.watchers.remove(id);
        }
        Err(error.into())
    }

    /// Stores an API change of one existing command before it is answered:
    /// its newest record among `effects` is written now. When the write
    /// fails the change is undone (unless something else changed the
    /// command since), the other effects are dropped, and the error is
    /// returned.
    pub(super) async fn store_change(
        &self,
        id: &Arc<str>,
        undo: Undo,
        effects: &mut Vec<Effect>,
    ) -> Result<(), CommandError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let newest = effects
            .iter()
            .rposition(|e| matches!(e, Effect::Persist { view, .. } if view.id.as_str() == &**id));
        let written = match newest.map(|i| effects.remove(i)) {
            Some(Effect::Persist {
                seq,
                version,
                deadline,
                view,
            }) => {
                effects.retain(
                    |e| !matches!(e, Effect::Persist { view, .. } if view.id.as_str() == &**id),
                );
                store.put(seq, version, deadline, &view).await
            }
            _ => Ok(()),
        };
        let Err(error) = written else {
            return Ok(());
        };
        self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(command = %id, %error, "could not store a change of a command; it was not made");
        effects.clear();
        let mut core = self.core.lock().unwrap();
        core.machine.undo(id, undo, effects);
        core.signal(effects);
        Err(error.into())
    }
}
