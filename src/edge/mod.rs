//! Edge nodes: gateways between a group of devices and the cloud. Each
//! node takes its member devices' readings into a bounded input queue,
//! runs every window's batch through a pipeline of edge-rule plugins, and
//! publishes what comes out on `edge/{node}/uplink/...`, keeping it in a
//! bounded buffer while its uplink is down.
//!
//! It owns the nodes, their queues, uplink buffers and counters. It does
//! not produce readings (telemetry hands them over through a
//! [`ReadingTap`](crate::telemetry::ReadingTap)), run plugins (the plugin
//! host does) or deliver commands (a [`CommandSink`] does).
//!
//! Persistence: with a data directory, node declarations and uplink
//! states are kept in `edge.db` (see [`store`]); without one they live in
//! memory.
//!
//! Membership: `ids` names devices whether or not they exist yet (one
//! created later with a listed id joins); `tag` and `group` follow the
//! fleet: the fleet tells a membership observer of every device created,
//! deleted, re-tagged or regrouped, and the node's members and the reading
//! routes change before that request returns.

mod mqtt_in;
mod node;
mod sink;
mod spec;
mod stats;
pub(crate) mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};

pub(crate) use node::EdgeNodeView;
pub(crate) use sink::{CommandSink, SinkFuture};
pub(crate) use spec::{DeviceSelector, EdgeNodeSpec, RuleSpec};

use crate::clock::Clock;
use crate::fleet::{DeviceFilter, Fleet};
use crate::mqtt::MqttHandle;
use crate::plugin::{CallContext, CallError, EdgeWindow, PluginHost, World};
use crate::tasks::Tasks;
use crate::telemetry::{Reading, ReadingTap, Telemetry};
use node::{Control, Node, Runtime};

/// A metric family: name, type, help, and the value of one node.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&EdgeNodeView) -> u64,
);

/// Commands waiting for a node's task (uplink changes); senders wait.
const CONTROL_CAPACITY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub(crate) enum EdgeError {
    #[error("no edge node {0:?}")]
    NotFound(String),
    #[error("edge node {0:?} already exists; pick another id or delete it first")]
    Duplicate(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] store::EdgeStoreError),
}

/// A handle on the edge nodes; cheap to clone.
#[derive(Clone)]
pub(crate) struct EdgeNodes(Arc<Inner>);

struct Inner {
    rt: Runtime,
    fleet: Fleet,
    // std locks: held for map operations only, never across an await.
    nodes: RwLock<BTreeMap<String, Handle>>,
    tap: Arc<Tap>,
    store: Option<store::EdgeStore>,
    /// Where the nodes and the MQTT follower run.
    tasks: Tasks,
}

struct Handle {
    node: Arc<Node>,
    control: mpsc::Sender<Control>,
}

/// Keeps tag and group selections current as the fleet changes.
struct Membership(std::sync::Weak<Inner>);

impl crate::fleet::MembershipObserver for Membership {
    fn device_changed(&self, device: &str, membership: Option<(&[String], Option<&str>)>) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let nodes = inner.nodes.read().unwrap();
        let following = || {
            nodes
                .values()
                .map(|h| &h.node)
                .filter(|n| n.spec.devices.ids.is_none())
        };
        // Provisioning calls this per device: without a tag or group node
        // it leaves the reading routes (read per reading) unlocked.
        if following().next().is_none() {
            return;
        }
        let mut routes = inner.tap.members.write().unwrap();
        for node in following() {
            let belongs =
                membership.is_some_and(|(tags, group)| node.spec.devices.follows(tags, group));
            let mut members = node.members.lock().unwrap();
            if belongs && !members.contains(device) {
                let id: Arc<str> = Arc::from(device);
                members.insert(id.clone());
                routes.entry(id).or_default().push(node.clone());
            } else if !belongs
                && members.remove(device)
                && let Some(list) = routes.get_mut(device)
            {
                list.retain(|n| !Arc::ptr_eq(n, node));
                if list.is_empty() {
                    routes.remove(device);
                }
            }
        }
        let active = !routes.is_empty();
        drop(routes);
        inner.tap.set_active(active, &inner.rt.mqtt);
    }
}

/// Routes published readings to the nodes of their device. It holds no
/// handle on telemetry, so the scheduler holding it makes no cycle.
#[derive(Debug)]
pub(crate) struct Tap {
    // A std lock: read for one map lookup per reading.
    members: RwLock<HashMap<Arc<str>, Vec<Arc<Node>>>>,
    /// Since which MQTT journal cursor some node has members (none: no
    /// node has). The MQTT follower sleeps while there is none, and reads
    /// from there when woken, so what a member publishes right after its
    /// node got it is not skipped however late the follower wakes.
    active: tokio::sync::watch::Sender<Option<u64>>,
}

impl Tap {
    fn set_active(&self, active: bool, mqtt: &MqttHandle) {
        self.active
            .send_if_modified(|since| match (active, *since) {
                (true, None) => {
                    *since = Some(*mqtt.journal_watch().borrow());
                    true
                }
                (false, Some(_)) => {
                    *since = None;
                    true
                }
                _ => false,
            });
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish()
    }
}

impl Tap {
    fn nodes_of(&self, device: &str) -> Option<Vec<Arc<Node>>> {
        self.members.read().unwrap().get(device).cloned()
    }
}

impl ReadingTap for Tap {
    fn reading(&self, reading: &Reading) {
        let members = self.members.read().unwrap();
        if let Some(nodes) = members.get(&*reading.device) {
            for node in nodes {
                node.accept(reading);
            }
        }
    }
}

impl EdgeNodes {
    /// Opens the node store in `data_dir` (if given); nodes start with
    /// [`restore`](Self::restore).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn open(
        data_dir: Option<&std::path::Path>,
        writers: &crate::sqlite::Writers,
        tasks: &Tasks,
        clock: Clock,
        telemetry: Telemetry,
        plugins: PluginHost,
        mqtt: MqttHandle,
        fleet: Fleet,
        seed: u64,
        sink: Arc<dyn CommandSink>,
    ) -> Result<Self, EdgeError> {
        let store = match data_dir {
            Some(dir) => Some(store::EdgeStore::open(dir, writers).await?),
            None => None,
        };
        let tap = Arc::new(Tap {
            members: RwLock::default(),
            active: tokio::sync::watch::Sender::new(None),
        });
        tasks.spawn(mqtt_in::follow(mqtt.clone(), tap.clone()));
        let inner = Arc::new(Inner {
            rt: Runtime {
                clock,
                telemetry,
                plugins,
                mqtt,
                sink,
                seed,
            },
            fleet,
            nodes: RwLock::default(),
            tap,
            store,
            tasks: tasks.clone(),
        });
        inner
            .fleet
            .observe_membership(Arc::new(Membership(Arc::downgrade(&inner))));
        Ok(Self(inner))
    }

    /// Starts the stored nodes (with their uplink state), then the
    /// scenario's nodes that are not stored yet. A stored node that no
    /// longer starts (its plugin is gone) is logged, skipped and kept.
    pub(crate) async fn restore(
        &self,
        scenario: &[EdgeNodeSpec],
    ) -> Result<(), (String, EdgeError)> {
        let stored = match &self.0.store {
            Some(store) => store.load().await.map_err(|e| (String::new(), e.into()))?,
            None => Vec::new(),
        };
        for (spec, up) in stored {
            let id = spec.id.clone();
            match self.start_node(spec, false).await {
                Ok(_) if !up => {
                    let _ = self.set_uplink(&id, false).await;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(node = %id, %error, "stored edge node not started");
                }
            }
        }
        for spec in scenario {
            if self.0.nodes.read().unwrap().contains_key(&spec.id) {
                continue;
            }
            self.create(spec.clone())
                .await
                .map_err(|e| (spec.id.clone(), e))?;
        }
        Ok(())
    }

    /// What telemetry calls with every published reading.
    pub(crate) fn tap(&self) -> Arc<dyn ReadingTap> {
        self.0.tap.clone()
    }

    /// Checks `spec` against the loaded plugins (and each rule's config
    /// against its plugin), resolves its members and starts it.
    pub(crate) async fn create(&self, spec: EdgeNodeSpec) -> Result<EdgeNodeView, EdgeError> {
        self.start_node(spec, true).await
    }

    async fn start_node(&self, spec: EdgeNodeSpec, store: bool) -> Result<EdgeNodeView, EdgeError> {
        spec.check().map_err(EdgeError::Invalid)?;
        if self.0.nodes.read().unwrap().contains_key(&spec.id) {
            return Err(EdgeError::Duplicate(spec.id));
        }
        for (i, rule) in spec.rules.iter().enumerate() {
            self.check_rule(&spec, i, rule).await?;
        }
        if store && let Some(db) = &self.0.store {
            db.put(&spec, true).await?;
        }
        let (control, rx) = mpsc::channel(CONTROL_CAPACITY);
        let node = {
            // Resolved under the nodes lock: a device created meanwhile
            // is either in the list or told to the membership observer,
            // which waits for this lock and then sees the node.
            let mut nodes = self.0.nodes.write().unwrap();
            if nodes.contains_key(&spec.id) {
                return Err(EdgeError::Duplicate(spec.id));
            }
            let members = self.resolve(&spec.devices);
            let node = Node::new(spec, members, self.0.rt.clock.now_ms());
            nodes.insert(
                node.id.to_string(),
                Handle {
                    node: node.clone(),
                    control,
                },
            );
            node
        };
        self.0.tasks.spawn(node.clone().run(self.0.rt.clone(), rx));
        self.rebuild_members();
        tracing::info!(node = %node.id, members = node.members.lock().unwrap().len(), rules = node.spec.rules.len(), "edge node created");
        Ok(node.view())
    }

    async fn check_rule(
        &self,
        spec: &EdgeNodeSpec,
        i: usize,
        rule: &RuleSpec,
    ) -> Result<(), EdgeError> {
        let plugins = &self.0.rt.plugins;
        match plugins.info(&rule.plugin).and_then(|p| p.world) {
            Some(World::EdgeRule) => {}
            Some(other) => {
                return Err(EdgeError::Invalid(format!(
                    "rules[{i}].plugin: {:?} is a {other} plugin, not an edge-rule",
                    rule.plugin
                )));
            }
            None => {
                let loaded: Vec<String> = plugins
                    .list()
                    .into_iter()
                    .filter(|p| p.world == Some(World::EdgeRule))
                    .map(|p| p.name)
                    .collect();
                return Err(EdgeError::Invalid(format!(
                    "rules[{i}].plugin: no edge-rule plugin named {:?} is loaded (loaded: {})",
                    rule.plugin,
                    if loaded.is_empty() {
                        "none".into()
                    } else {
                        loaded.join(", ")
                    }
                )));
            }
        }
        // An empty batch checks the configuration; only a refusal of it is
        // the caller's mistake (a rule that misbehaves shows up later as a
        // degraded node).
        let now = self.0.rt.clock.now_ms();
        let (result, _) = plugins
            .process_edge(
                &rule.plugin,
                std::sync::Arc::from(rule.config.to_string()),
                Vec::new(),
                EdgeWindow {
                    start: now,
                    end: now,
                },
                Vec::new(),
                CallContext::default(),
                spec.call_budget(std::time::Duration::from_millis(spec.budget.time_ms)),
            )
            .await;
        match result {
            Err(CallError::InvalidConfig { detail, .. }) => {
                Err(EdgeError::Invalid(format!("rules[{i}].config: {detail}")))
            }
            _ => Ok(()),
        }
    }

    /// The devices a selector names now.
    fn resolve(&self, selector: &DeviceSelector) -> Vec<String> {
        if let Some(ids) = &selector.ids {
            return ids.clone();
        }
        self.0.fleet.select(&DeviceFilter {
            tag: selector.tag.clone(),
            group: selector.group.clone(),
            ..Default::default()
        })
    }

    fn rebuild_members(&self) {
        let nodes = self.0.nodes.read().unwrap();
        let mut members: HashMap<Arc<str>, Vec<Arc<Node>>> = HashMap::new();
        for handle in nodes.values() {
            for id in handle.node.members.lock().unwrap().iter() {
                members
                    .entry(id.clone())
                    .or_default()
                    .push(handle.node.clone());
            }
        }
        let active = !members.is_empty();
        *self.0.tap.members.write().unwrap() = members;
        self.0.tap.set_active(active, &self.0.rt.mqtt);
    }

    pub(crate) fn list(&self) -> Vec<EdgeNodeView> {
        let nodes: Vec<Arc<Node>> = self
            .0
            .nodes
            .read()
            .unwrap()
            .values()
            .map(|h| h.node.clone())
            .collect();
        nodes.iter().map(|n| n.view()).collect()
    }

    pub(crate) fn get(&self, id: &str) -> Result<EdgeNodeView, EdgeError> {
        Ok(self.node(id)?.view())
    }

    fn node(&self, id: &str) -> Result<Arc<Node>, EdgeError> {
        self.0
            .nodes
            .read()
            .unwrap()
            .get(id)
            .map(|h| h.node.clone())
            .ok_or_else(|| EdgeError::NotFound(id.to_string()))
    }

    /// Takes the uplink down (output is buffered) or up (the buffer is
    /// published in order before this returns).
    pub(crate) async fn set_uplink(&self, id: &str, up: bool) -> Result<EdgeNodeView, EdgeError> {
        let (node, control) = {
            let nodes = self.0.nodes.read().unwrap();
            let handle = nodes
                .get(id)
                .ok_or_else(|| EdgeError::NotFound(id.to_string()))?;
            (handle.node.clone(), handle.control.clone())
        };
        if let Some(db) = &self.0.store {
            db.set_uplink(id, up).await?;
        }
        let (tx, rx) = oneshot::channel();
        if control.send(Control::Uplink(up, tx)).await.is_ok() {
            let _ = rx.await;
        }
        Ok(node.view())
    }

    /// Stops a node and forgets it; what its uplink buffer held is
    /// discarded.
    pub(crate) async fn delete(&self, id: &str) -> Result<(), EdgeError> {
        if !self.0.nodes.read().unwrap().contains_key(id) {
            return Err(EdgeError::NotFound(id.to_string()));
        }
        if let Some(db) = &self.0.store {
            db.remove(id).await?;
        }
        self.0
            .nodes
            .write()
            .unwrap()
            .remove(id)
            .ok_or_else(|| EdgeError::NotFound(id.to_string()))?;
        self.rebuild_members();
        tracing::info!(node = id, "edge node deleted");
        Ok(())
    }

    /// Appends the nodes' counters in the Prometheus text format.
    pub(crate) fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let views = self.list();
        let families: [Family; 7] = [
            (
                "edge_readings_in_total",
                "counter",
                "Readings that reached an edge node.",
                |v| v.readings.r#in,
            ),
            (
                "edge_readings_out_total",
                "counter",
                "Readings an edge node published on its uplink.",
                |v| v.readings.out,
            ),
            (
                "edge_readings_dropped_total",
                "counter",
                "Readings an edge node's full input queue had no room for.",
                |v| v.readings.dropped,
            ),
            (
                "edge_uplink_dropped_total",
                "counter",
                "Uplink messages a full edge buffer had no room for.",
                |v| v.uplink.dropped,
            ),
            (
                "edge_uplink_buffered",
                "gauge",
                "Uplink messages waiting in an edge node's buffer.",
                |v| v.uplink.buffered,
            ),
            (
                "edge_failed_batches_total",
                "counter",
                "Batches a rule failed on.",
                |v| v.failed_batches,
            ),
            (
                "edge_degraded",
                "gauge",
                "1 while an edge node is degraded.",
                |v| u64::from(v.reason.is_some()),
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(
                out,
                "# HELP iotmock_{name} {help}\n# TYPE iotmock_{name} {kind}"
            );
            for v in &views {
                let _ = writeln!(out, "iotmock_{name}{{node=\"{}\"}} {}", v.id, value(v));
            }
        }
    }

    /// Resolves once every node has processed the windows ending at or
    /// before simulated time `t`.
    pub(crate) async fn wait_processed(&self, t: i64) {
        let nodes: Vec<Arc<Node>> = self
            .0
            .nodes
            .read()
            .unwrap()
            .values()
            .map(|h| h.node.clone())
            .collect();
        for node in nodes {
            node.wait_processed(t).await;
        }
    }
}
