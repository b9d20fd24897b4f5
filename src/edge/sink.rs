//! Where an edge rule's `command` actions go: the command engine, behind a
//! small trait so the edge module does not depend on it. The server wires
//! the command engine in (`app.rs`), the one place that knows both.

use std::future::Future;
use std::pin::Pin;

use crate::plugin::EdgeCommand;

/// A boxed future, so the trait stays object-safe.
pub(crate) type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// Takes commands issued by edge rules. `submit` answers with the
/// command's id once it is accepted, or says why it was refused; it does
/// not wait for the device's answer.
pub(crate) trait CommandSink: Send + Sync + 'static {
    fn submit<'a>(&'a self, node: &'a str, command: &'a EdgeCommand) -> SinkFuture<'a>;
}
