//! Where an edge rule's `command` actions go: the command engine, behind a
//! small trait so the edge module does not depend on its internals.

use std::future::Future;
use std::pin::Pin;

use crate::plugin::EdgeCommand;

/// A boxed future, so the trait stays object-safe.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// Takes commands issued by edge rules. `submit` answers with the
/// command's id once it is accepted, or says why it was refused; it does
/// not wait for the device's answer.
pub trait CommandSink: Send + Sync + 'static {
    fn submit<'a>(&'a self, node: &'a str, command: &'a EdgeCommand) -> SinkFuture<'a>;
}

/// Edge commands go to the command engine like any other, marked as
/// coming from an edge node, with its defaults for timeout and retries.
impl CommandSink for crate::commands::Commands {
    fn submit<'a>(&'a self, _node: &'a str, command: &'a EdgeCommand) -> SinkFuture<'a> {
        Box::pin(async move {
            let params: serde_json::Value = serde_json::from_str(&command.params)
                .map_err(|e| format!("the rule's params are not JSON: {e}"))?;
            let request = crate::commands::CommandRequest {
                name: command.name.clone(),
                params: Some(params),
                ..Default::default()
            };
            self.submit_as(
                &command.device,
                request,
                crate::commands::Origin::Edge,
                None,
            )
            .await
            .map(|view| view.id)
            .map_err(|e| e.to_string())
        })
    }
}
