//! Watches the plugins folder. The watcher only reports which `*.wasm`
//! files changed; a debounced task then asks the registry to load or drop
//! them, so a burst of writes to one file becomes one reload.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{PluginHost, PluginSource};

/// Quiet time after the last event before a changed file is loaded.
const DEBOUNCE: Duration = Duration::from_millis(25);
/// Change notifications waiting for the debounce task; more are dropped and
/// picked up by the next event on the same file, or by a rescan.
const EVENT_CAPACITY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("plugins folder {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("watching plugins folder {path}: {source}")]
    Notify { path: String, source: notify::Error },
}

/// Keeps the folder watched while alive.
pub(crate) struct PluginWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// Loads every `*.wasm` in `dir`, then watches it for changes.
pub(crate) async fn watch(
    tasks: &crate::tasks::Tasks,
    host: PluginHost,
    dir: &Path,
) -> Result<PluginWatcher, WatchError> {
    let dir = std::fs::canonicalize(dir).map_err(|source| WatchError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let (tx, rx) = mpsc::channel::<PathBuf>(EVENT_CAPACITY);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            for path in event.paths {
                if is_plugin_file(&path) && tx.try_send(path).is_err() {
                    tracing::warn!("plugin change notifications are backing up; one was dropped");
                }
            }
        }
    })
    .map_err(|source| WatchError::Notify {
        path: dir.display().to_string(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError::Notify {
            path: dir.display().to_string(),
            source,
        })?;

    let entries = std::fs::read_dir(&dir).map_err(|source| WatchError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut initial: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_plugin_file(p))
        .collect();
    initial.sort();
    let mut seen = Seen::default();
    for path in initial {
        apply(&host, &path, &mut seen).await;
    }
    tasks.spawn(debounce(host, rx, seen));
    Ok(PluginWatcher { _watcher: watcher })
}

fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm")
}

/// The bytes last applied per file: a late, repeated notification for a
/// file that has not changed since is ignored.
type Seen = std::collections::HashMap<PathBuf, u64>;

async fn debounce(host: PluginHost, mut rx: mpsc::Receiver<PathBuf>, mut seen: Seen) {
    while let Some(first) = rx.recv().await {
        let mut changed = BTreeSet::from([first]);
        loop {
            match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                Ok(Some(path)) => {
                    changed.insert(path);
                }
                Ok(None) => return,
                Err(_) => break,
            }
        }
        for path in changed {
            apply(&host, &path, &mut seen).await;
        }
    }
}

/// Loads, reloads or drops the plugin behind one file.
async fn apply(host: &PluginHost, path: &Path, seen: &mut Seen) {
    let Some(name) = path
        .file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_string)
    else {
        return;
    };
    match tokio::fs::read(path).await {
        Ok(bytes) => {
            let fingerprint = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut h);
                h.finish()
            };
            if seen.insert(path.to_path_buf(), fingerprint) == Some(fingerprint) {
                return;
            }
            let source = PluginSource::File {
                path: path.to_path_buf(),
            };
            if let Err(error) = host.load_async(name.clone(), bytes, source).await {
                tracing::warn!(plugin = %name, path = %path.display(), %error, "plugin file not loaded");
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            seen.remove(path);
            host.remove_file(&name, path)
        }
        Err(error) => {
            tracing::warn!(plugin = %name, path = %path.display(), %error, "plugin file unreadable")
        }
    }
}
