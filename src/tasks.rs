//! `Tasks`: one cancellation token and one task tracker that own every long-lived task of a
//! daemon (node supervisors, draining connections, accept loops, the admin server, node
//! sources), so that shutdown can stop them all and wait for them, bounded. A *critical* task
//! (an accept loop, the admin server, a node source) that ends while the daemon is not
//! shutting down marks the daemon unhealthy: `/healthz` then fails and names the task, so a
//! liveness probe restarts a daemon that can no longer do its job.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Reports a critical task's end when dropped (on return and on panic alike).
struct EndGuard {
    tasks: Tasks,
    name: &'static str,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.tasks.ended(self.name);
    }
}

/// Cheap to clone: every clone shares the same token, tracker and health.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    token: CancellationToken,
    tracker: TaskTracker,
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Set when an orderly shutdown begins: critical tasks may end from then on.
    stopping: AtomicBool,
    /// The critical tasks that ended early, by name.
    ended: Mutex<Vec<&'static str>>,
}

impl Tasks {
    /// A fresh set: nothing running, healthy.
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Cancelled when the whole daemon stops; tasks select on it (or on a child of it).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Runs `fut` as a tracked task.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Runs `fut` as a tracked task the daemon cannot do without: if it ends before
    /// [`Tasks::begin_shutdown`], the daemon is unhealthy from then on.
    pub fn spawn_critical<F>(&self, name: &'static str, fut: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let guard = EndGuard {
            tasks: self.clone(),
            name,
        };
        self.tracker.spawn(async move {
            // Dropped when the task ends, however it ends (a panic too).
            let _guard = guard;
            fut.await;
        })
    }

    /// Records that critical task `name` ended (a no-op once shutdown has begun).
    fn ended(&self, name: &'static str) {
        if self.inner.stopping.load(Ordering::Acquire) {
            return;
        }
        tracing::error!(
            task = name,
            "a task the daemon needs has stopped; /healthz now fails"
        );
        self.inner
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name);
    }

    /// Ok while every critical task runs (or shutdown has begun); else the names of those that
    /// ended.
    pub fn health(&self) -> Result<(), Vec<&'static str>> {
        let ended = self.inner.ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.is_empty() {
            Ok(())
        } else {
            Err(ended.clone())
        }
    }

    /// From now on critical tasks may end without making the daemon unhealthy.
    pub fn begin_shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
    }

    /// Cancels the token and waits up to `within` for every tracked task to end. Returns how
    /// many were still running at the limit (they are left to the runtime's shutdown).
    pub async fn stop(&self, within: Duration) -> usize {
        self.begin_shutdown();
        self.token.cancel();
        self.tracker.close();
        if tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_err()
        {
            return self.tracker.len();
        }
        0
    }

    /// Tracked tasks running now.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_critical_task_that_ends_early_makes_the_daemon_unhealthy() {
        let tasks = Tasks::new();
        assert_eq!(tasks.health(), Ok(()));
        tasks.spawn_critical("accept loop", async {}).await.unwrap();
        assert_eq!(tasks.health(), Err(vec!["accept loop"]));
    }

    #[tokio::test]
    async fn a_critical_task_that_panics_makes_the_daemon_unhealthy() {
        let tasks = Tasks::new();
        let r = tasks
            .spawn_critical("node source", async { panic!("boom") })
            .await;
        assert!(r.is_err());
        assert_eq!(tasks.health(), Err(vec!["node source"]));
    }

    #[tokio::test]
    async fn critical_tasks_may_end_once_shutdown_has_begun() {
        let tasks = Tasks::new();
        let t = tasks.token().clone();
        let h = tasks.spawn_critical("admin server", async move { t.cancelled().await });
        assert_eq!(tasks.stop(Duration::from_secs(5)).await, 0);
        h.await.unwrap();
        assert_eq!(tasks.health(), Ok(()));
        assert_eq!(tasks.running(), 0);
    }

    #[tokio::test]
    async fn stop_is_bounded_when_a_task_ignores_the_token() {
        let tasks = Tasks::new();
        let h = tasks.spawn(std::future::pending::<()>());
        // A stop that does not keep its bound fails here instead of hanging the test run.
        let left = tokio::time::timeout(
            Duration::from_secs(10),
            tasks.stop(Duration::from_millis(50)),
        )
        .await
        .expect("stop(50 ms) did not return within 10 s: its bound does not hold for a task that ignores the token");
        assert_eq!(
            left, 1,
            "the task that ignores the token is counted as left"
        );
        assert_eq!(tasks.running(), 1);
        h.abort();
    }
}
