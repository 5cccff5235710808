//! One accept loop for every listener the registry serves: the protocol port and the HTTP API.
//!
//! It accepts until the shutdown future completes, backs off briefly when `accept` fails (EMFILE
//! and friends) instead of spinning, caps the connections held at once with a semaphore, and
//! runs each connection as a tracked task, so that a shutdown can wait for them to end.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

/// Accepts on `listener` until `shutdown` resolves. For each connection `route` is given the
/// socket, the peer and, when the limit allows, a permit that it keeps inside the task it
/// returns (without one, the connection is over the limit: its task, if any, only refuses). Returns the tracker of the connection tasks, closed, for the caller to wait on.
pub async fn accept_loop<F, Fut>(
    listener: &TcpListener,
    max_connections: usize,
    log_target: &'static str,
    shutdown: impl Future<Output = ()>,
    mut route: F,
) -> TaskTracker
where
    F: FnMut(TcpStream, SocketAddr, Option<OwnedSemaphorePermit>) -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_connections.max(1)));
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(target: "sfc::registry", listener = log_target, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let permit = limit.clone().try_acquire_owned().ok();
        if let Some(task) = route(tcp, peer, permit) {
            tracker.spawn(task);
        }
    }
    tracker.close();
    tracker
}
