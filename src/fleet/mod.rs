//! The device fleet: identities, credentials, lifecycle and connectivity,
//! kept in memory for fast reads and written through to the durable store
//! before any change is acknowledged.
//!
//! It owns the device records and decides which simulated devices stream
//! (it hands their sensors to telemetry). It does not produce readings and
//! does not run the broker; the broker asks it about credentials.

pub(crate) mod access;
pub(crate) mod certificates;
pub(crate) mod credentials;
mod http_link;
pub(crate) mod model;
mod store;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub(crate) use http_link::{DEFAULT_HTTP_DEVICE_TIMEOUT_MS, ReportMode, ReportedState};
pub(crate) use model::*;
pub(crate) use store::StoreError;

use tokio::sync::broadcast;

use crate::clock::{Clock, rfc3339_ms};
use crate::dialect::{DeviceDialect, Outgoing, encode_and_publish};
use crate::ids::{DeviceId, expand_pattern};
use crate::mqtt::{MqttHandle, Qos, topics};
use crate::plugin::{CallError, CodecDevice, CodecEvent, PluginHost, SharedState, World};
use crate::random::DeviceRng;
use crate::tasks::Tasks;
use crate::telemetry::{BufferCounters, Presence, SensorSpec, StreamSpec, Telemetry, check_sensor};
use credentials::{SecretHash, new_secret};
use store::{Inserted, Store};

/// What reads the messages clients publish in the devices' dialects. The
/// fleet tells it of every dialect in use and asks it which topics a
/// device may publish on; it does not know how the messages are read
/// (the server wires the reader in, which itself depends on the fleet).
pub(crate) trait DialectReader: Send + Sync + 'static {
    /// Starts reading a dialect's traffic (once per codec and config).
    fn listen(&self, dialect: &DeviceDialect);
    /// The same, for a dialect whose codec has just declared its topic
    /// filters: reading starts before this returns.
    fn listen_known(&self, plugin: &str, config: &str, filters: &[String]);
    /// Whether a device of `dialect` may publish on `topic`.
    fn may_publish(&self, dialect: &DeviceDialect, topic: &str) -> bool;
}

/// Most devices one bulk call creates.
pub(crate) const MAX_BULK: u32 = 1_000_000;
/// Most devices the fleet holds by default (`--max-devices`): about 1 KiB
/// each in memory, so some 100 MiB at the cap.
pub(crate) const DEFAULT_MAX_DEVICES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("no device {0:?}")]
    NotFound(String),
    #[error("device {0:?} already exists; pick another id or PATCH the existing device")]
    Duplicate(String),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "the fleet may hold at most {max} devices (--max-devices) and has {current}; this request would add {asked}; delete devices or start the server with a larger --max-devices"
    )]
    TooMany {
        max: usize,
        current: usize,
        asked: usize,
    },
    #[error(
        "device {device:?} has no certificate {serial}; GET /api/v1/devices/{device}/certificates lists them"
    )]
    NoCertificate { device: String, serial: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Room reserved for devices being created; given back when dropped.
struct Reservation(Arc<Inner>, usize);

impl Drop for Reservation {
    fn drop(&mut self) {
        self.0.reserved.fetch_sub(self.1, Ordering::AcqRel);
    }
}

/// A device in memory: its record, secret, and live connectivity.
struct Entry {
    device: Mutex<Arc<Device>>,
    secret: Mutex<SecretHash>,
    presence: Arc<Presence>,
    shared: Arc<SharedState>,
    /// Its dialect and the codec state kept for it; replaced when a PATCH
    /// changes what the dialect depends on. A std lock: held to clone or
    /// swap the Arc, never across an await.
    dialect: Mutex<Arc<DeviceDialect>>,
    buffer_counters: Arc<BufferCounters>,
    connect_count: AtomicU64,
    /// Simulated ms; i64::MIN when never seen.
    last_seen: AtomicI64,
    /// Polling connectivity and reported state of a device using the HTTP
    /// device API.
    http: http_link::HttpLink,
}

impl Entry {
    fn device(&self) -> Arc<Device> {
        self.device.lock().unwrap().clone()
    }

    fn dialect(&self) -> Arc<DeviceDialect> {
        self.dialect.lock().unwrap().clone()
    }
}

/// The device as its dialect sees it.
fn codec_device(device: &Device) -> CodecDevice {
    CodecDevice {
        id: device.id.clone(),
        group: device.group.clone(),
        kind: device.kind.clone(),
        username: device.id.clone(),
        simulated: device.simulated,
    }
}

/// A handle on the fleet; cheap to clone.
#[derive(Clone)]
pub(crate) struct Fleet(Arc<Inner>);

/// A handle on the fleet that does not keep it: for what the fleet itself
/// holds (the broker's authorizer), so that no cycle outlives the server.
#[derive(Clone)]
pub(crate) struct WeakFleet(std::sync::Weak<Inner>);

impl WeakFleet {
    pub(crate) fn upgrade(&self) -> Option<Fleet> {
        self.0.upgrade().map(Fleet)
    }
}

struct Inner {
    // A std lock: held for map operations only, never across an await.
    devices: RwLock<BTreeMap<String, Arc<Entry>>>,
    store: Store,
    clock: Clock,
    seed: u64,
    telemetry: Telemetry,
    mqtt: MqttHandle,
    plugins: PluginHost,
    /// Silence, in simulated ms, after which an HTTP device is offline.
    http_timeout_ms: AtomicI64,
    /// Most devices the fleet holds.
    max_devices: AtomicUsize,
    /// Devices being created now (stored, not yet in the map): counted
    /// against `max_devices` so that concurrent creations cannot pass it.
    reserved: AtomicUsize,
    /// Every connectivity change (the command engine delivers queued
    /// commands on `online`). A lagging listener is told how many it
    /// missed and rescans.
    presence: broadcast::Sender<PresenceChange>,
    /// Told when devices join, leave or change tags or group (edge nodes
    /// that select by tag or group follow it).
    membership: std::sync::OnceLock<Arc<dyn MembershipObserver>>,
    /// The CA that issues device certificates and the TLS listeners'
    /// revocation list.
    tls: Arc<crate::transport::Tls>,
    /// Reads what clients publish in the dialects devices use. Weak: the
    /// readers hold the fleet, and the server holds them.
    inbound: std::sync::OnceLock<std::sync::Weak<dyn DialectReader>>,
    /// Where its timers and followers run.
    tasks: Tasks,
}

/// Told, synchronously, of every device that is created, deleted, or
/// changes its tags or group, so that selections by tag or group stay
/// current before the call that changed them returns.
pub(crate) trait MembershipObserver: Send + Sync {
    /// `device` now has `tags` and `group`; `None` when it was deleted.
    fn device_changed(&self, device: &str, membership: Option<(&[String], Option<&str>)>);
}

/// A device went online or offline.
#[derive(Debug, Clone)]
pub(crate) struct PresenceChange {
    pub device: String,
    pub online: bool,
}

/// What the command engine needs to know to deliver to a device.
#[derive(Debug, Clone)]
pub(crate) struct CommandTarget {
    pub simulated: bool,
    /// How commands to it are written.
    pub dialect: Arc<DeviceDialect>,
    pub handler: Option<HandlerSpec>,
    pub shared: Arc<SharedState>,
    pub online: bool,
}

/// Connectivity changes a slow listener may fall behind by before it
/// has to rescan.
const PRESENCE_EVENTS: usize = 4096;

impl Fleet {
    /// Opens the store and brings every stored device back: simulated
    /// devices in service resume streaming.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn open(
        data_dir: Option<&std::path::Path>,
        writers: &crate::sqlite::Writers,
        tasks: &Tasks,
        clock: Clock,
        seed: u64,
        telemetry: Telemetry,
        mqtt: MqttHandle,
        plugins: PluginHost,
        tls: Arc<crate::transport::Tls>,
    ) -> Result<Self, FleetError> {
        let store = Store::open(data_dir, writers).await?;
        let stored = store.load_all().await?;
        tls.revoke(store.revoked_serials().await?);
        let fleet = Fleet(Arc::new(Inner {
            devices: RwLock::default(),
            store,
            clock,
            seed,
            telemetry,
            mqtt,
            plugins,
            http_timeout_ms: AtomicI64::new(DEFAULT_HTTP_DEVICE_TIMEOUT_MS),
            max_devices: AtomicUsize::new(DEFAULT_MAX_DEVICES),
            reserved: AtomicUsize::new(0),
            presence: broadcast::channel(PRESENCE_EVENTS).0,
            membership: std::sync::OnceLock::new(),
            tls,
            inbound: std::sync::OnceLock::new(),
            tasks: tasks.clone(),
        }));
        let count = stored.len();
        let mut streams = Vec::new();
        for (device, secret) in stored {
            let entry = fleet.install(device, secret);
            streams.extend(fleet.streams_of(&entry));
            fleet.announce(&entry).await;
        }
        fleet.0.telemetry.add(streams).await;
        let dialects = fleet
            .0
            .devices
            .read()
            .unwrap()
            .values()
            .map(|e| e.dialect())
            .collect();
        fleet.prepare_probes(dialects).await;
        fleet.restore_reported().await?;
        if count > 0 {
            tracing::info!(devices = count, "fleet restored from the store");
        }
        Ok(fleet)
    }

    fn install(&self, device: Device, secret: SecretHash) -> Arc<Entry> {
        let online = device.simulated && device.state == Lifecycle::Active;
        let dialect =
            DeviceDialect::new(device.dialect.as_ref(), codec_device(&device), self.0.seed);
        let entry = Arc::new(Entry {
            presence: Arc::new(Presence::new(online)),
            shared: Arc::new(SharedState::default()),
            dialect: Mutex::new(dialect),
            buffer_counters: Arc::default(),
            device: Mutex::new(Arc::new(device)),
            secret: Mutex::new(secret),
            connect_count: AtomicU64::new(0),
            last_seen: AtomicI64::new(i64::MIN),
            http: Default::default(),
        });
        if let Some(inbound) = self.inbound() {
            inbound.listen(&entry.dialect());
        }
        let device = entry.device();
        self.0
            .devices
            .write()
            .unwrap()
            .insert(device.id.clone(), entry.clone());
        self.membership_changed(&device.id, Some((&device.tags, device.group.as_deref())));
        entry
    }

    /// Registers the one membership observer (the edge nodes).
    pub(crate) fn observe_membership(&self, observer: Arc<dyn MembershipObserver>) {
        if self.0.membership.set(observer).is_err() {
            tracing::error!("a second membership observer was refused");
        }
    }

    fn membership_changed(&self, id: &str, membership: Option<(&[String], Option<&str>)>) {
        if let Some(observer) = self.0.membership.get() {
            observer.device_changed(id, membership);
        }
    }

    /// The telemetry streams of a device that should stream now.
    fn streams_of(&self, entry: &Arc<Entry>) -> Vec<StreamSpec> {
        let device = entry.device();
        if !device.simulated || device.state != Lifecycle::Active {
            return Vec::new();
        }
        device
            .sensors
            .iter()
            .map(|sensor| StreamSpec {
                device: device.id.clone(),
                sensor: sensor.clone(),
                shared: entry.shared.clone(),
                presence: entry.presence.clone(),
                buffer: device.buffer,
                counters: entry.buffer_counters.clone(),
                dialect: entry.dialect(),
            })
            .collect()
    }

    /// Publishes a simulated device's status (retained).
    async fn announce(&self, entry: &Entry) {
        let device = entry.device();
        if device.simulated {
            let online = entry.presence.online_at(self.0.clock.now_ms());
            self.publish_status(&device.id, online).await;
        }
    }

    async fn publish_status(&self, id: &str, online: bool) {
        let _ = self.0.presence.send(PresenceChange {
            device: id.to_string(),
            online,
        });
        // A device in another dialect says it in its own words.
        if let Ok(entry) = self.entry(id)
            && !entry.dialect().native(&self.0.plugins)
        {
            let now = self.0.clock.now_ms();
            let event = Outgoing {
                dialect: entry.dialect(),
                shared: Some(entry.shared.clone()),
                ts: now,
                event: CodecEvent::Status(online),
            };
            encode_and_publish(&self.0.plugins, &self.0.mqtt, now, vec![event]).await;
            return;
        }
        let payload: &'static [u8] = if online { b"online" } else { b"offline" };
        self.0
            .mqtt
            .publish(&topics::status(id), payload, Qos::AtLeastOnce, true)
            .await;
    }

    /// Encodes a status event for each device through its codec, one
    /// batched call per codec and configuration (the devices' own
    /// presence is left alone).
    async fn encode_status(&self, entries: &[Arc<Entry>], online: bool) {
        let now = self.0.clock.now_ms();
        let mut groups: BTreeMap<(Arc<str>, Arc<str>), Vec<Outgoing>> = BTreeMap::new();
        for entry in entries {
            let dialect = entry.dialect();
            groups
                .entry((dialect.plugin.clone(), dialect.config.clone()))
                .or_default()
                .push(Outgoing {
                    dialect,
                    shared: Some(entry.shared.clone()),
                    ts: now,
                    event: CodecEvent::Status(online),
                });
        }
        for items in groups.into_values() {
            encode_and_publish(&self.0.plugins, &self.0.mqtt, now, items).await;
        }
    }

    /// Whether a device is simulated, online at `now` and speaks a
    /// codec's dialect.
    fn codec_speaker_online(&self, entry: &Entry, now: i64) -> bool {
        let d = entry.device();
        d.simulated
            && d.state == Lifecycle::Active
            && entry.presence.online_at(now)
            && !entry.dialect().native(&self.0.plugins)
    }

    /// Simulated devices online now whose dialect is a codec's.
    fn codec_speakers_online(&self) -> Vec<Arc<Entry>> {
        let now = self.0.clock.now_ms();
        // The map's order is id order: the same calls publish the same
        // messages in the same order.
        self.0
            .devices
            .read()
            .unwrap()
            .values()
            .filter(|e| self.codec_speaker_online(e, now))
            .cloned()
            .collect()
    }

    /// The broker goes down on purpose for `duration`. A simulated device
    /// has no connection of its own, so the host does what the broker of
    /// a real one would: each simulated device in a codec dialect loses
    /// its link (its codec says so in its words: a Sparkplug node's
    /// `NDEATH` will, at QoS 1 so the outage holds it for persistent
    /// sessions), and once the broker listens again the devices still
    /// online come back (a fresh birth). Devices in the built-in dialect
    /// keep their retained status.
    pub(crate) async fn broker_outage(&self, duration: std::time::Duration) {
        let lost = self.codec_speakers_online();
        if lost.is_empty() {
            return;
        }
        self.encode_status(&lost, false).await;
        let fleet = self.clone();
        self.0.tasks.spawn(async move {
            tokio::time::sleep(duration).await;
            // The listener may need a moment more than the outage to be
            // back; births published before that would be dropped.
            loop {
                match fleet.0.mqtt.status().state {
                    "up" => break,
                    "stopped" => return,
                    _ => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                }
            }
            let now = fleet.0.clock.now_ms();
            let back: Vec<Arc<Entry>> = lost
                .into_iter()
                .filter(|e| {
                    fleet
                        .entry(&e.device().id)
                        .is_ok_and(|now_e| Arc::ptr_eq(&now_e, e))
                        && e.device().state == Lifecycle::Active
                        && e.presence.online_at(now)
                })
                .collect();
            fleet.encode_status(&back, true).await;
        });
    }

    /// A simulated device asked (in its dialect) to say again that it is
    /// online, such as a Sparkplug host's `Node Control/Rebirth`: its codec
    /// encodes its status anew. Real devices speak for themselves.
    pub(crate) async fn announce_again(&self, id: &str) {
        let Ok(entry) = self.entry(id) else { return };
        if self.codec_speaker_online(&entry, self.0.clock.now_ms()) {
            self.encode_status(&[entry], true).await;
        }
    }

    fn entry(&self, id: &str) -> Result<Arc<Entry>, FleetError> {
        self.0
            .devices
            .read()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| FleetError::NotFound(id.to_string()))
    }

    /// Checks a template's sensors and handler against the loaded plugins.
    fn check_template(&self, t: &DeviceTemplate) -> Result<(), FleetError> {
        for (i, sensor) in t.sensors.iter().enumerate() {
            check_sensor(sensor).map_err(|e| FleetError::Invalid(format!("sensors[{i}]: {e}")))?;
            self.check_plugin(
                &sensor.plugin,
                World::Sensor,
                &format!("sensors[{i}].plugin"),
            )?;
        }
        let mut names: Vec<&str> = t.sensors.iter().map(SensorSpec::sensor_name).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(FleetError::Invalid(format!(
                "sensors: two sensors are named {:?}; give one a `name`",
                w[0]
            )));
        }
        if let Some(buffer) = &t.buffer {
            buffer.validate().map_err(FleetError::Invalid)?;
        }
        if let Some(handler) = &t.command_handler {
            self.check_plugin(handler.plugin(), World::CommandHandler, "command_handler")?;
        }
        for tag in &t.tags {
            if tag.is_empty() || tag.len() > 64 {
                return Err(FleetError::Invalid(format!(
                    "tags: {tag:?} must be 1 to 64 characters"
                )));
            }
        }
        Ok(())
    }

    fn check_plugin(&self, name: &str, world: World, field: &str) -> Result<(), FleetError> {
        match self.0.plugins.info(name).and_then(|i| i.world) {
            Some(w) if w == world => Ok(()),
            Some(w) => Err(FleetError::Invalid(format!(
                "{field}: plugin {name:?} is a {w} plugin, not a {world}"
            ))),
            None => {
                let loaded: Vec<String> = self
                    .0
                    .plugins
                    .list()
                    .into_iter()
                    .filter(|p| p.world == Some(world))
                    .map(|p| p.name)
                    .collect();
                Err(FleetError::Invalid(format!(
                    "{field}: no {world} plugin named {name:?} is loaded (loaded: {})",
                    if loaded.is_empty() {
                        "none".to_string()
                    } else {
                        loaded.join(", ")
                    }
                )))
            }
        }
    }

    /// Checks a dialect: a loaded codec plugin that takes its
    /// configuration. `field` names it in the error.
    async fn check_dialect(
        &self,
        dialect: Option<&DialectSpec>,
        field: &str,
    ) -> Result<(), FleetError> {
        match dialect {
            None => Ok(()),
            Some(spec) => {
                let info = crate::dialect::check(&self.0.plugins, spec, field)
                    .await
                    .map_err(FleetError::Invalid)?;
                // Listening before the device exists: a real device may
                // publish as soon as it is answered for.
                if let (Some(info), Some(inbound)) = (info, self.inbound()) {
                    inbound.listen_known(spec.plugin(), &spec.config_text(), &info.filters);
                }
                Ok(())
            }
        }
    }

    /// Asks each sensor's plugin to check its configuration (`describe`),
    /// so a typo is refused now, by name, instead of failing every reading
    /// later. `device` names the device (or the bulk template) in the error;
    /// `checked` remembers the (plugin, config) pairs already accepted.
    async fn check_sensor_configs(
        &self,
        device: &str,
        sensors: &[SensorSpec],
        checked: &mut std::collections::HashSet<(String, String)>,
    ) -> Result<(), FleetError> {
        for (i, sensor) in sensors.iter().enumerate() {
            let config = sensor.config.to_string();
            let key = (sensor.plugin.clone(), config);
            if checked.contains(&key) {
                continue;
            }
            match self.0.plugins.check_sensor_config(&key.0, &key.1).await {
                Ok(_) => {}
                Err(CallError::InvalidConfig { detail, .. }) => {
                    let detail = detail.strip_prefix("config: ").unwrap_or(&detail);
                    return Err(FleetError::Invalid(format!(
                        "{device}, sensor {:?} (sensors[{i}]): plugin {:?} refused its config: {detail}",
                        sensor.sensor_name(),
                        sensor.plugin,
                    )));
                }
                // The plugin could not answer (it trapped, ran out of time):
                // that is its fault, not the config's, and shows in
                // `/plugins`; the device is accepted.
                Err(error) => {
                    tracing::warn!(plugin = %sensor.plugin, %error, "sensor plugin could not check a config");
                }
            }
            checked.insert(key);
        }
        Ok(())
    }

    fn build(&self, id: DeviceId, t: &DeviceTemplate, shared: &SharedParts) -> Device {
        let now = self.0.clock.now_ms();
        Device {
            id: id.into_string(),
            kind: t.kind.clone(),
            tags: shared.tags.clone(),
            group: t.group.clone(),
            metadata: shared.metadata.clone(),
            sensors: shared.sensors.clone(),
            command_handler: t.command_handler.clone(),
            dialect: t.dialect.clone(),
            simulated: t.simulated,
            buffer: t.buffer.unwrap_or_default(),
            state: if t.simulated {
                Lifecycle::Active
            } else {
                Lifecycle::Provisioned
            },
            created_at: now,
            updated_at: now,
        }
    }

    /// Creates one device; the answer carries its credentials, shown once.
    pub(crate) async fn create(
        &self,
        id: DeviceId,
        template: DeviceTemplate,
    ) -> Result<DeviceView, FleetError> {
        self.check_template(&template)?;
        self.check_sensor_configs(
            &format!("device {id:?}"),
            &template.sensors,
            &mut Default::default(),
        )
        .await?;
        self.check_dialect(template.dialect.as_ref(), "dialect")
            .await?;
        let shared = SharedParts::of(&template);
        let device = self.build(id, &template, &shared);
        let (mut created, _) = self.insert(vec![device], false).await?;
        Ok(created.remove(0))
    }

    /// Creates `count` devices from a pattern and a template, in one
    /// transaction: all or none.
    pub(crate) async fn create_bulk(&self, request: BulkCreate) -> Result<BulkCreated, FleetError> {
        if request.count == 0 || request.count > MAX_BULK {
            return Err(FleetError::Invalid(format!(
                "count must be 1 to {MAX_BULK}, got {}",
                request.count
            )));
        }
        // Before anything is built: a bulk call over the cap costs nothing.
        drop(self.reserve(request.count as usize)?);
        self.check_template(&request.template)?;
        self.check_sensor_configs(
            &format!("template (devices {:?})", request.id_pattern),
            &request.template.sensors,
            &mut Default::default(),
        )
        .await?;
        self.check_dialect(request.template.dialect.as_ref(), "template.dialect")
            .await?;
        let ids = expand_pattern(
            &request.id_pattern,
            request.first.unwrap_or(1),
            request.count,
        )
        .map_err(FleetError::Invalid)?;
        let ids = ids
            .into_iter()
            .map(DeviceId::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| FleetError::Invalid(e.to_string()))?;
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        for id in &ids {
            if !seen.insert(id.as_str()) {
                return Err(FleetError::Invalid(format!(
                    "id_pattern {:?} makes the id {id:?} twice; widen the {{n:0W}} width",
                    request.id_pattern
                )));
            }
        }
        drop(seen);
        let shared = SharedParts::of(&request.template);
        let devices = ids
            .into_iter()
            .map(|id| self.build(id, &request.template, &shared))
            .collect();
        let (created, certs) = self.insert(devices, request.certificates).await?;
        let mut certs = certs.into_iter();
        Ok(BulkCreated {
            created: created.len(),
            devices: created
                .into_iter()
                .map(|v| CreatedDevice {
                    id: v.id,
                    credentials: v.credentials.expect("new device"),
                    certificate: if request.certificates {
                        certs.next()
                    } else {
                        None
                    },
                })
                .collect(),
        })
    }

    /// Stores new devices (all or none), with a certificate each when
    /// `certs`, then brings them to life.
    async fn insert(
        &self,
        devices: Vec<Device>,
        certs: bool,
    ) -> Result<(Vec<DeviceView>, Vec<certificates::IssuedCertificate>), FleetError> {
        let _room = self.reserve(devices.len())?;
        {
            let map = self.0.devices.read().unwrap();
            if let Some(d) = devices.iter().find(|d| map.contains_key(&d.id)) {
                return Err(FleetError::Duplicate(d.id.clone()));
            }
        }
        let mut secrets = Vec::with_capacity(devices.len());
        let pairs: Vec<(Device, SecretHash)> = devices
            .into_iter()
            .map(|d| {
                let (secret, hash) = new_secret();
                secrets.push(secret);
                (d, hash)
            })
            .collect();
        let (cert_rows, issued) = if certs {
            self.make_certificates(pairs.iter().map(|(d, _)| d.id.clone()).collect())
                .await?
        } else {
            Default::default()
        };
        let rows = match self.0.store.insert(pairs, cert_rows).await? {
            Inserted::Stored(rows) => rows,
            Inserted::Exists(id) => return Err(FleetError::Duplicate(id)),
        };
        let mut views = Vec::with_capacity(rows.len());
        let mut streams = Vec::new();
        let mut dialects = Vec::new();
        for ((device, hash), secret) in rows.into_iter().zip(secrets) {
            let id = device.id.clone();
            let entry = self.install(device, hash);
            dialects.push(entry.dialect());
            streams.extend(self.streams_of(&entry));
            self.announce(&entry).await;
            let mut view = self.view(&entry);
            view.credentials = Some(Credentials {
                username: id,
                password: secret,
            });
            views.push(view);
        }
        self.0.telemetry.add(streams).await;
        self.prepare_probes(dialects).await;
        Ok((views, issued))
    }

    /// Asks the codecs of real devices where their commands go (see
    /// [`crate::dialect::prepare_probes`]).
    async fn prepare_probes(&self, dialects: Vec<Arc<DeviceDialect>>) {
        crate::dialect::prepare_probes(&self.0.plugins, self.0.clock.now_ms(), &dialects).await;
    }

    /// Provisions the scenario's devices that are not in the store yet.
    /// Every device of the scenario is checked first, as `POST /devices`
    /// checks one (plugin names and worlds, sensor configs): a scenario
    /// with a misspelled plugin or config key does not start.
    pub(crate) async fn provision_scenario(
        &self,
        devices: &[DeviceSpec],
    ) -> Result<usize, FleetError> {
        let templates: Vec<DeviceTemplate> = devices.iter().map(scenario_template).collect();
        let mut new = Vec::new();
        let mut checked = std::collections::HashSet::new();
        let mut dialects_checked = std::collections::HashSet::new();
        for (spec, template) in devices.iter().zip(&templates) {
            let device = format!("device {:?}", spec.id);
            self.check_template(template).map_err(|e| match e {
                FleetError::Invalid(detail) => FleetError::Invalid(format!("{device}: {detail}")),
                other => other,
            })?;
            self.check_sensor_configs(&device, &spec.sensors, &mut checked)
                .await?;
            // Once per codec and configuration, like the sensors'.
            if let Some(dialect) = &spec.dialect
                && dialects_checked.insert((dialect.plugin().to_string(), dialect.config_text()))
            {
                self.check_dialect(Some(dialect), &format!("{device}: dialect"))
                    .await?;
            }
        }
        for (spec, template) in devices.iter().zip(&templates) {
            if self
                .0
                .devices
                .read()
                .unwrap()
                .contains_key(spec.id.as_str())
            {
                continue;
            }
            let shared = SharedParts::of(template);
            new.push(self.build(spec.id.clone(), template, &shared));
        }
        let n = new.len();
        if n > 0 {
            self.insert(new, false).await?;
        }
        Ok(n)
    }

    pub(crate) fn get(&self, id: &str) -> Result<DeviceView, FleetError> {
        Ok(self.view(&self.entry(id)?))
    }

    pub(crate) fn len(&self) -> usize {
        self.0.devices.read().unwrap().len()
    }

    /// Sets the most devices the fleet holds (`--max-devices`); devices
    /// already there stay.
    pub(crate) fn set_max_devices(&self, max: usize) {
        self.0.max_devices.store(max, Ordering::Relaxed);
    }

    /// The cap on the fleet's size.
    pub(crate) fn max_devices(&self) -> usize {
        self.0.max_devices.load(Ordering::Relaxed)
    }

    /// Room for `n` more devices, held until the returned guard is dropped
    /// (by then they are in the map, or were not created).
    fn reserve(&self, n: usize) -> Result<Reservation, FleetError> {
        let max = self.max_devices();
        let reserved = self.0.reserved.fetch_add(n, Ordering::AcqRel) + n;
        let current = self.len();
        if current.saturating_add(reserved) > max {
            self.0.reserved.fetch_sub(n, Ordering::AcqRel);
            return Err(FleetError::TooMany {
                max,
                current,
                asked: n,
            });
        }
        Ok(Reservation(self.0.clone(), n))
    }

    /// A page of devices matching `filter`, ordered by id.
    pub(crate) fn list(&self, filter: &DeviceFilter) -> Result<DevicePage, FleetError> {
        let limit = filter.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(FleetError::Invalid(format!(
                "limit must be 1 to 1000, got {limit}"
            )));
        }
        let want_online = match filter.connectivity.as_deref() {
            None => None,
            Some("online") => Some(true),
            Some("offline") => Some(false),
            Some(other) => {
                return Err(FleetError::Invalid(format!(
                    "connectivity {other:?} is not valid: use online or offline"
                )));
            }
        };
        let now = self.0.clock.now_ms();
        let entries: Vec<Arc<Entry>> = self.0.devices.read().unwrap().values().cloned().collect();
        let mut total = 0;
        let mut items = Vec::new();
        let mut next_cursor = None;
        for entry in entries {
            let d = entry.device();
            let matches = filter.tag.as_ref().is_none_or(|t| d.tags.contains(t))
                && filter
                    .group
                    .as_ref()
                    .is_none_or(|g| d.group.as_ref() == Some(g))
                && filter.state.is_none_or(|s| d.state == s)
                && filter
                    .kind
                    .as_ref()
                    .is_none_or(|k| d.kind.as_ref() == Some(k))
                && want_online.is_none_or(|o| entry.presence.online_at(now) == o);
            if !matches {
                continue;
            }
            total += 1;
            let after_cursor = filter
                .cursor
                .as_ref()
                .is_none_or(|c| d.id.as_str() > c.as_str());
            if after_cursor {
                if items.len() < limit {
                    items.push(self.view(&entry));
                } else if next_cursor.is_none() {
                    next_cursor = items.last().map(|v: &DeviceView| v.id.clone());
                }
            }
        }
        Ok(DevicePage {
            items,
            next_cursor,
            total,
        })
    }

    /// Changes the fields given; a lifecycle change starts or stops the
    /// device's telemetry.
    pub(crate) async fn update(
        &self,
        id: &str,
        patch: PatchDevice,
    ) -> Result<DeviceView, FleetError> {
        let entry = self.entry(id)?;
        let old = entry.device();
        let mut d = (*old).clone();
        if let Some(kind) = patch.kind {
            d.kind = Some(kind);
        }
        if let Some(tags) = patch.tags {
            d.tags = Arc::new(tags);
        }
        if let Some(group) = patch.group {
            d.group = Some(group);
        }
        if let Some(metadata) = patch.metadata {
            d.metadata = Arc::new(metadata);
        }
        if let Some(sensors) = patch.sensors {
            d.sensors = Arc::new(sensors);
        }
        if let Some(handler) = patch.command_handler {
            self.check_plugin(handler.plugin(), World::CommandHandler, "command_handler")?;
            d.command_handler = Some(handler);
        }
        if let Some(buffer) = patch.buffer {
            d.buffer = buffer;
        }
        if let Some(dialect) = patch.dialect {
            self.check_dialect(Some(&dialect), "dialect").await?;
            d.dialect = Some(dialect);
        }
        if let Some(state) = patch.state {
            if state == Lifecycle::Provisioned {
                return Err(FleetError::Invalid(
                    "state: a device cannot go back to provisioned; use active, suspended or decommissioned".into(),
                ));
            }
            if old.state == Lifecycle::Decommissioned && state != Lifecycle::Decommissioned {
                return Err(FleetError::Invalid(format!(
                    "state: device {id:?} is decommissioned for good; provision a new device instead"
                )));
            }
            d.state = state;
        }
        let template = DeviceTemplate {
            kind: d.kind.clone(),
            tags: (*d.tags).clone(),
            group: d.group.clone(),
            metadata: Default::default(),
            sensors: (*d.sensors).clone(),
            command_handler: d.command_handler.clone(),
            dialect: d.dialect.clone(),
            simulated: d.simulated,
            buffer: Some(d.buffer),
        };
        self.check_template(&template)?;
        if old.sensors != d.sensors {
            self.check_sensor_configs(
                &format!("device {id:?}"),
                &d.sensors,
                &mut Default::default(),
            )
            .await?;
        }
        d.updated_at = self.0.clock.now_ms();
        self.0.store.update(&d).await?;
        let now = self.0.clock.now_ms();
        // The dialect sees the device's group and type (topics may carry
        // them): a change of either, or of the dialect, gives the device a
        // new one. Its streams carry the dialect, so they restart with it.
        let redialect = old.dialect != d.dialect
            || ((old.group != d.group || old.kind != d.kind) && !entry.dialect().is_default());
        if redialect && self.codec_speaker_online(&entry, now) {
            self.encode_status(std::slice::from_ref(&entry), false)
                .await;
        }
        let restream = old.state != d.state || old.sensors != d.sensors || redialect;
        let online_before = entry.presence.online_at(now);
        *entry.device.lock().unwrap() = Arc::new(d.clone());
        if redialect {
            let dialect = DeviceDialect::new(d.dialect.as_ref(), codec_device(&d), self.0.seed);
            *entry.dialect.lock().unwrap() = dialect.clone();
            if let Some(inbound) = self.inbound() {
                inbound.listen(&dialect);
            }
            self.prepare_probes(vec![dialect]).await;
        }
        if old.tags != d.tags || old.group != d.group {
            self.membership_changed(id, Some((&d.tags, d.group.as_deref())));
        }
        if !restream && old.buffer != d.buffer {
            self.0.telemetry.set_buffer(id, d.buffer).await;
        }
        if restream {
            self.0.telemetry.remove_device(id).await;
            if d.simulated {
                entry.presence.set(d.state == Lifecycle::Active);
            }
            self.0.telemetry.add(self.streams_of(&entry)).await;
            if d.simulated && online_before != (d.state == Lifecycle::Active) {
                self.publish_status(id, d.state == Lifecycle::Active).await;
            } else if redialect && d.simulated && entry.presence.online_at(now) {
                self.publish_status(id, true).await;
            }
        }
        Ok(self.view(&entry))
    }

    /// Removes a device and everything about it.
    pub(crate) async fn delete(&self, id: &str) -> Result<(), FleetError> {
        let entry = self.entry(id)?;
        let (_, revoked) = self.0.store.delete(id, crate::clock::wall_ms()).await?;
        self.0.tls.revoke(revoked);
        // A device in a codec dialect says goodbye in its own words (a
        // Sparkplug node's death certificate) while it is still known.
        if self.codec_speaker_online(&entry, self.0.clock.now_ms()) {
            self.encode_status(std::slice::from_ref(&entry), false)
                .await;
        }
        self.0.devices.write().unwrap().remove(id);
        self.membership_changed(id, None);
        self.0.telemetry.remove_device(id).await;
        if entry.device().simulated {
            // Clear the retained status: the device is gone.
            self.0
                .mqtt
                .publish(&topics::status(id), Vec::new(), Qos::AtLeastOnce, true)
                .await;
        }
        Ok(())
    }

    /// Issues a new secret; the old one stops working at once.
    pub(crate) async fn rotate(&self, id: &str) -> Result<Credentials, FleetError> {
        let entry = self.entry(id)?;
        let (secret, hash) = new_secret();
        let at = self.0.clock.now_ms();
        self.0.store.set_secret(id, &hash, at).await?;
        *entry.secret.lock().unwrap() = hash;
        Ok(Credentials {
            username: id.to_string(),
            password: secret,
        })
    }

    /// Takes a simulated device online, offline, or makes it flaky.
    pub(crate) async fn set_connectivity(
        &self,
        id: &str,
        request: ConnectivityRequest,
    ) -> Result<DeviceView, FleetError> {
        let entry = self.entry(id)?;
        let device = entry.device();
        if !device.simulated {
            return Err(FleetError::Invalid(format!(
                "device {id:?} is a real device: its MQTT connection decides its connectivity"
            )));
        }
        if device.state != Lifecycle::Active {
            return Err(FleetError::Invalid(format!(
                "device {id:?} is {}; make it active first (PATCH state)",
                device.state.as_str()
            )));
        }
        let now = self.0.clock.now_ms();
        let was_online = entry.presence.online_at(now);
        match request.state {
            ConnectivityMode::Online => entry.presence.set(true),
            ConnectivityMode::Offline => entry.presence.set(false),
            ConnectivityMode::Flaky => {
                let rng = DeviceRng::derive(self.0.seed, id, "connectivity");
                entry.presence.set_flaky(
                    rng,
                    now,
                    request.mean_online_ms.unwrap_or(30_000),
                    request.mean_offline_ms.unwrap_or(5_000),
                );
                self.spawn_flaky_watch(entry.clone(), id.to_string());
            }
        }
        let online = entry.presence.online_at(now);
        if online != was_online || request.state == ConnectivityMode::Online {
            self.publish_status(id, online).await;
        }
        if online {
            self.0.telemetry.flush().await;
        }
        Ok(self.view(&entry))
    }

    /// Publishes a flaky device's status at every flip until it is no
    /// longer flaky or no longer in the fleet.
    fn spawn_flaky_watch(&self, entry: Arc<Entry>, id: String) {
        let fleet = self.clone();
        self.0.tasks.spawn(async move {
            while let Some(flip) = entry.presence.next_flip() {
                fleet.0.clock.sleep_until(flip).await;
                if !entry.presence.is_flaky() || fleet.entry(&id).is_err() {
                    return;
                }
                let online = entry.presence.online_at(flip);
                fleet.publish_status(&id, online).await;
                if online {
                    fleet.0.telemetry.flush().await;
                }
            }
        });
    }

    /// Connectivity changes from now on.
    pub(crate) fn presence_events(&self) -> broadcast::Receiver<PresenceChange> {
        self.0.presence.subscribe()
    }

    /// Whether a device is online now (`None`: no such device).
    pub(crate) fn is_online(&self, id: &str) -> Option<bool> {
        let entry = self.entry(id).ok()?;
        Some(entry.presence.online_at(self.0.clock.now_ms()))
    }

    /// A device's dialect and shared state, when the device exists.
    pub(crate) fn dialect_of(&self, id: &str) -> Option<(Arc<DeviceDialect>, Arc<SharedState>)> {
        let entry = self.entry(id).ok()?;
        Some((entry.dialect(), entry.shared.clone()))
    }

    /// Whether device `id` may publish on `topic` because its dialect
    /// reads messages there (iotmock's own topics are checked elsewhere).
    pub(crate) fn dialect_may_publish(&self, id: &str, topic: &str) -> bool {
        let (Ok(entry), Some(inbound)) = (self.entry(id), self.inbound()) else {
            return false;
        };
        // No filters are known for the default dialect: false for it.
        inbound.may_publish(&entry.dialect(), topic)
    }

    /// Whether device `id` may subscribe to `filter` because its commands
    /// go out there in its dialect.
    pub(crate) fn dialect_may_subscribe(&self, id: &str, filter: &str) -> bool {
        let Ok(entry) = self.entry(id) else {
            return false;
        };
        // The default dialect has no probe.
        entry
            .dialect()
            .command_probe()
            .is_some_and(|probe| topics::matches(filter, probe))
    }

    /// Simulated time now.
    pub(crate) fn now_ms(&self) -> i64 {
        self.0.clock.now_ms()
    }

    pub(crate) fn downgrade(&self) -> WeakFleet {
        WeakFleet(Arc::downgrade(&self.0))
    }

    /// The dialect decoders, while the server runs.
    fn inbound(&self) -> Option<Arc<dyn DialectReader>> {
        self.0.inbound.get()?.upgrade()
    }

    /// Hands the decoders of dialects every dialect in use, now and from
    /// now on (set once). The fleet does not keep them: the caller does.
    pub(crate) fn set_inbound(&self, inbound: &Arc<dyn DialectReader>) {
        let entries: Vec<Arc<Entry>> = self.0.devices.read().unwrap().values().cloned().collect();
        for entry in entries {
            inbound.listen(&entry.dialect());
        }
        if self.0.inbound.set(Arc::downgrade(inbound)).is_err() {
            tracing::error!("a second set of dialect decoders was refused");
        }
    }

    /// A device as the command engine sees it.
    pub(crate) fn command_target(&self, id: &str) -> Result<CommandTarget, FleetError> {
        let entry = self.entry(id)?;
        let device = entry.device();
        Ok(CommandTarget {
            simulated: device.simulated,
            dialect: entry.dialect(),
            handler: device.command_handler.clone(),
            shared: entry.shared.clone(),
            online: device.state == Lifecycle::Active
                && entry.presence.online_at(self.0.clock.now_ms()),
        })
    }

    /// The ids of devices matching `filter` (every device when it is
    /// empty), in id order.
    pub(crate) fn select(&self, filter: &DeviceFilter) -> Vec<String> {
        let devices = self.0.devices.read().unwrap();
        devices
            .iter()
            .filter(|(_, e)| {
                let d = e.device();
                filter.tag.as_ref().is_none_or(|t| d.tags.contains(t))
                    && filter
                        .group
                        .as_ref()
                        .is_none_or(|g| d.group.as_ref() == Some(g))
                    && filter.state.is_none_or(|s| d.state == s)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Takes a simulated device offline or back online (a reboot); no-op
    /// for real devices, whose connection decides.
    pub(crate) async fn set_simulated_online(&self, id: &str, online: bool) {
        let Ok(entry) = self.entry(id) else { return };
        if !entry.device().simulated {
            return;
        }
        entry.presence.set(online);
        self.publish_status(id, online).await;
        if online {
            self.0.telemetry.flush().await;
        }
    }

    /// Checks MQTT credentials: the username is the device id.
    pub(crate) fn authenticate(&self, username: &str, password: &[u8]) -> AuthOutcome {
        let Ok(entry) = self.entry(username) else {
            return AuthOutcome::Unknown;
        };
        if !entry.secret.lock().unwrap().verify(password) {
            return AuthOutcome::WrongSecret;
        }
        if !entry.device().state.may_connect() {
            return AuthOutcome::NotAllowed;
        }
        AuthOutcome::Ok
    }

    /// Checks a device's verified certificate (its subject common name is
    /// the device id; chain, validity and revocation were checked by TLS).
    pub(crate) fn authenticate_cert(&self, device: &str) -> AuthOutcome {
        match self.entry(device) {
            Err(_) => AuthOutcome::Unknown,
            Ok(entry) if !entry.device().state.may_connect() => AuthOutcome::NotAllowed,
            Ok(_) => AuthOutcome::Ok,
        }
    }

    /// Follows the broker's connection events: a real device is online
    /// while its MQTT connection is open (user name, else client id, is the
    /// device id).
    pub(crate) fn follow(
        &self,
        mut events: tokio::sync::broadcast::Receiver<crate::mqtt::ClientEvent>,
    ) {
        let fleet = self.clone();
        self.0.tasks.spawn(async move {
            use crate::mqtt::ClientEvent;
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(ClientEvent::Connected { client_id, user }) => {
                        fleet.connected(user.as_deref().unwrap_or(&client_id)).await
                    }
                    Ok(ClientEvent::Disconnected {
                        client_id, user, ..
                    }) => {
                        fleet
                            .disconnected(user.as_deref().unwrap_or(&client_id))
                            .await
                    }
                    Err(RecvError::Lagged(missed)) => {
                        crate::ratelimit::warn_limited!(
                            missed,
                            "connection events missed; device connectivity may lag until the next one"
                        )
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }

    /// A real device's MQTT connection opened.
    pub(crate) async fn connected(&self, id: &str) {
        let Ok(entry) = self.entry(id) else { return };
        let device = entry.device();
        entry.http.set_protocol(http_link::Protocol::Mqtt);
        entry.connect_count.fetch_add(1, Ordering::Relaxed);
        entry
            .last_seen
            .store(self.0.clock.now_ms(), Ordering::Relaxed);
        if device.simulated {
            return;
        }
        if device.state == Lifecycle::Provisioned {
            let patch = PatchDevice {
                state: Some(Lifecycle::Active),
                ..Default::default()
            };
            if let Err(error) = self.update(id, patch).await {
                crate::ratelimit::warn_limited!(device = id, %error, "could not mark the device active");
            }
        }
        entry.presence.set(true);
        self.publish_status(id, true).await;
    }

    /// A real device's MQTT connection closed.
    pub(crate) async fn disconnected(&self, id: &str) {
        let Ok(entry) = self.entry(id) else { return };
        entry
            .last_seen
            .store(self.0.clock.now_ms(), Ordering::Relaxed);
        if !entry.device().simulated {
            entry.presence.set(false);
            self.publish_status(id, false).await;
        }
    }

    fn view(&self, entry: &Arc<Entry>) -> DeviceView {
        let d = entry.device();
        let online = entry.presence.online_at(self.0.clock.now_ms());
        let last_seen = entry.last_seen.load(Ordering::Relaxed);
        DeviceView {
            id: d.id.clone(),
            kind: d.kind.clone(),
            tags: d.tags.clone(),
            group: d.group.clone(),
            metadata: d.metadata.clone(),
            sensors: d.sensors.clone(),
            command_handler: d.command_handler.clone(),
            dialect: d.dialect.clone().unwrap_or_default(),
            simulated: d.simulated,
            state: d.state,
            connectivity: ConnectivityView {
                state: if online { "online" } else { "offline" },
                mode: if d.simulated {
                    entry.presence.mode()
                } else {
                    entry.http.protocol().unwrap_or("mqtt")
                },
                protocol: entry.http.protocol(),
                last_seen: (last_seen != i64::MIN).then(|| rfc3339_ms(last_seen)),
                connect_count: entry.connect_count.load(Ordering::Relaxed),
                polling: entry.http.polling(),
            },
            buffer: d.buffer,
            telemetry: DeviceTelemetry {
                buffered: entry.buffer_counters.buffered.load(Ordering::Relaxed),
                buffer_dropped: entry.buffer_counters.dropped.load(Ordering::Relaxed),
            },
            created_at: rfc3339_ms(d.created_at),
            updated_at: rfc3339_ms(d.updated_at),
            credentials: None,
            reported: entry.http.reported(),
        }
    }
}

/// The answer to a credential check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthOutcome {
    Ok,
    Unknown,
    WrongSecret,
    /// Suspended or decommissioned.
    NotAllowed,
}

/// Parts of a template shared by every device made from it.
struct SharedParts {
    tags: Arc<Vec<String>>,
    metadata: Arc<serde_json::Map<String, serde_json::Value>>,
    sensors: Arc<Vec<SensorSpec>>,
}

impl SharedParts {
    fn of(t: &DeviceTemplate) -> Self {
        Self {
            tags: Arc::new(t.tags.clone()),
            metadata: Arc::new(t.metadata.clone()),
            sensors: Arc::new(t.sensors.clone()),
        }
    }
}

/// The template a scenario's device is checked and built from.
fn scenario_template(spec: &DeviceSpec) -> DeviceTemplate {
    DeviceTemplate {
        kind: spec.kind.clone(),
        tags: spec.tags.clone(),
        group: spec.group.clone(),
        sensors: spec.sensors.clone(),
        command_handler: spec.command_handler.clone(),
        dialect: spec.dialect.clone(),
        buffer: spec.buffer,
        ..DeviceTemplate {
            simulated: true,
            ..Default::default()
        }
    }
}
