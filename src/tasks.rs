//! The server's background tasks (the telemetry scheduler, followers of
//! the broker's events, timers of flaky and HTTP devices, command shards,
//! edge nodes, ...). Each runs until it ends by itself or the server
//! stops: [`Tasks::stop`] cancels those still running and waits until
//! they are dropped, so nothing of a stopped server goes on running in an
//! embedding program's runtime, or holds its plugins, sockets and
//! databases.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub(crate) struct Tasks {
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    /// Runs `task` on the current runtime until it ends or the server
    /// stops; a task spawned once the server is stopping does not run.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            stop.run_until_cancelled(task).await;
        });
    }

    /// Cancels every task still running and waits, at most `within`, for
    /// all of them to be dropped. Returns how many were still running
    /// when `within` was up.
    pub(crate) async fn stop(&self, within: Duration) -> usize {
        self.tracker.close();
        self.stop.cancel();
        match tokio::time::timeout(within, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

/// The server's hold on its tasks: dropped (a server dropped without its
/// shutdown, say by a panicking test), it cancels them as well.
pub(crate) struct StopOnDrop(pub(crate) Tasks);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.tracker.close();
        self.0.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_cancels_what_runs_and_what_is_spawned_after() {
        let tasks = Tasks::default();
        let (dropped_tx, mut dropped) = tokio::sync::mpsc::channel::<()>(4);
        let guard = dropped_tx.clone();
        tasks.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        tasks.spawn(async {});
        assert_eq!(tasks.stop(Duration::from_secs(5)).await, 0);
        drop(dropped_tx);
        assert_eq!(dropped.recv().await, None, "the pending task was dropped");

        let (ran_tx, mut ran) = tokio::sync::mpsc::channel::<()>(1);
        tasks.spawn(async move {
            let _ = ran_tx.send(()).await;
        });
        assert_eq!(tasks.stop(Duration::from_secs(5)).await, 0);
        assert_eq!(
            ran.recv().await,
            None,
            "a task spawned after the stop never runs"
        );
    }

    #[tokio::test]
    async fn a_dropped_hold_cancels_the_tasks() {
        let held = StopOnDrop(Tasks::default());
        let tasks = held.0.clone();
        let (dropped_tx, mut dropped) = tokio::sync::mpsc::channel::<()>(1);
        tasks.spawn(async move {
            let _guard = dropped_tx;
            std::future::pending::<()>().await;
        });
        drop(held);
        assert_eq!(dropped.recv().await, None, "the pending task was dropped");
    }
}
