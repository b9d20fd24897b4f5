//! Simulated devices answering commands: each command sent to a simulated
//! device becomes a job for its shard, a task that runs the device's
//! `command-handler` plugin (or answers `completed` when it has none) and
//! hands the replies to the state machine as timers. One device is always
//! on the same shard, so its handler calls and random draws keep their
//! order and a seed gives the same answers.

use std::collections::HashMap;
use std::sync::Weak;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::Inner;
use super::model::CommandMessage;
use crate::fleet::HandlerSpec;
use crate::plugin::{
    CallContext, DeviceSlot, HandlerCommand, HandlerReply, Handling, PluginHost, ReplyStatus,
};
use crate::random::DeviceRng;

/// Handler calls that may wait per shard; senders wait when full.
pub(super) const SHARD_QUEUE: usize = 4_096;

/// A simulated device's handler call for a command sent at `at`.
pub(super) struct Job {
    device: String,
    message: CommandMessage,
    at: i64,
}

impl Inner {
    /// Hands a simulated device's command, sent at `at`, to its shard.
    pub(super) async fn dispatch(&self, device: String, message: CommandMessage, at: i64) {
        let shard = (fnv(&device) % self.shards.len() as u64) as usize;
        self.pending_jobs.fetch_add(1, Ordering::AcqRel);
        if self.shards[shard]
            .send(Job {
                device,
                message,
                at,
            })
            .await
            .is_err()
        {
            self.pending_jobs.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs simulated devices' handlers, one call at a time per shard.
pub(super) async fn run_shard(
    inner: Weak<Inner>,
    mut jobs: mpsc::Receiver<Job>,
    plugins: PluginHost,
    seed: u64,
) {
    let mut rngs: HashMap<String, DeviceRng> = HashMap::new();
    while let Some(job) = jobs.recv().await {
        let Some(i) = inner.upgrade() else { return };
        let answer = handle(&i, &plugins, seed, &mut rngs, &job).await;
        {
            let mut core = i.core.lock().unwrap();
            core.machine
                .schedule_replies(&job.device, &job.message, answer, job.at);
        }
        i.pending_jobs.fetch_sub(1, Ordering::AcqRel);
        i.wake.notify_one();
        i.activity.send_modify(|n| *n += 1);
    }
}

/// How a simulated device answers: its handler plugin's decision, or,
/// without a handler, a `completed` ack at once. A handler that fails
/// makes the device answer `failed` with the error as the result.
async fn handle(
    i: &Inner,
    plugins: &PluginHost,
    seed: u64,
    rngs: &mut HashMap<String, DeviceRng>,
    job: &Job,
) -> Handling {
    let Ok(target) = i.fleet.command_target(&job.device) else {
        return Handling::default();
    };
    let Some(spec) = target.handler else {
        return Handling {
            replies: vec![HandlerReply {
                delay_ms: 0,
                status: ReplyStatus::Completed,
                result: None,
            }],
            offline_ms: None,
        };
    };
    let rng = rngs
        .remove(&job.device)
        .unwrap_or_else(|| DeviceRng::derive(seed, &job.device, "commands"));
    let ctx = CallContext {
        now: job.at,
        slots: vec![DeviceSlot {
            rng,
            state: Some(target.shared.clone()),
            deferred: None,
        }],
    };
    let command = HandlerCommand {
        id: job.message.id.clone(),
        name: job.message.name.clone(),
        params: job.message.params.to_string(),
        attempt: job.message.attempt,
    };
    let (result, mut ctx) = call_handler(plugins, &spec, ctx, command).await;
    let rng = match ctx.slots.pop() {
        Some(slot) => slot.rng,
        None => DeviceRng::derive(seed, &job.device, "commands"),
    };
    rngs.insert(job.device.clone(), rng);
    match result {
        Ok(handling) => handling,
        Err(error) => {
            i.stats.handler_errors.fetch_add(1, Ordering::Relaxed);
            crate::ratelimit::warn_limited!(device = %job.device, command = %job.message.id, %error, "command handler failed; the device answers `failed`");
            Handling {
                replies: vec![HandlerReply {
                    delay_ms: 0,
                    status: ReplyStatus::Failed,
                    result: Some(serde_json::json!({ "error": error }).to_string()),
                }],
                offline_ms: None,
            }
        }
    }
}

async fn call_handler(
    plugins: &PluginHost,
    spec: &HandlerSpec,
    ctx: CallContext,
    command: HandlerCommand,
) -> (Result<Handling, String>, CallContext) {
    let (result, ctx) = plugins
        .handle_command(spec.plugin(), spec.config_text().into(), ctx, command)
        .await;
    (result.map_err(|e| e.to_string()), ctx)
}
