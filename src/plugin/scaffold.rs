//! `iotmock plugin new`: a plugin crate of its own, outside this checkout,
//! built on the SDK (`plugins/sdk`) with one command.
//!
//! The templates live next to this file (`scaffold/*.tmpl`) and are filled
//! with `format!`-style placeholders at compile time, so a template that
//! names a placeholder this code does not give fails the build, not the
//! user.

use std::fmt;
use std::path::{Path, PathBuf};

/// The SDK in the checkout this binary was built from; a scaffold depends
/// on it by path.
pub const SDK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/plugins/sdk");

/// The WIT world a new plugin implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaffoldWorld {
    /// `sensor`: samples readings.
    Sensor,
    /// `command-handler`: answers commands.
    CommandHandler,
    /// `edge-rule`: acts on a window of readings.
    EdgeRule,
}

impl ScaffoldWorld {
    /// The world's name, which is also the SDK's cargo feature for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sensor => "sensor",
            Self::CommandHandler => "command-handler",
            Self::EdgeRule => "edge-rule",
        }
    }
}

impl fmt::Display for ScaffoldWorld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a scaffold was not written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name is not a plugin name.
    #[error(
        "plugin name {0:?} is not valid: start with a letter a-z, then use up to 63 more of a-z, 0-9, '-' and '_'"
    )]
    Name(String),
    /// The crate's folder is taken.
    #[error("{0} already exists and is not empty; pick another name or --dir")]
    Exists(PathBuf),
    /// The SDK folder is missing.
    #[error(
        "the plugin SDK is not at {0}: pass --sdk with the plugins/sdk folder of an iotmock checkout"
    )]
    NoSdk(PathBuf),
    /// A file could not be written.
    #[error("could not write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// What [`create`] wrote.
#[derive(Debug)]
pub struct Scaffold {
    /// The crate's folder.
    pub dir: PathBuf,
    /// Where `cargo build --release --target wasm32-wasip2` puts the
    /// component, relative to `dir` (without a CARGO_TARGET_DIR).
    pub artifact: PathBuf,
}

/// Writes a new plugin crate `name` of `world` into `parent/name`, depending
/// on the SDK at `sdk` by path.
pub fn create(
    name: &str,
    world: ScaffoldWorld,
    parent: &Path,
    sdk: &Path,
) -> Result<Scaffold, ScaffoldError> {
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) || !crate::plugin::valid_name(name) {
        return Err(ScaffoldError::Name(name.to_string()));
    }
    let sdk = std::path::absolute(sdk).unwrap_or_else(|_| sdk.to_path_buf());
    if !sdk.join("Cargo.toml").is_file() {
        return Err(ScaffoldError::NoSdk(sdk));
    }
    let dir = parent.join(name);
    if std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(ScaffoldError::Exists(dir));
    }
    let file = name.replace('-', "_");
    // A TOML basic string: the path with its backslashes and quotes escaped.
    let sdk_toml = format!("{:?}", sdk.display().to_string());
    let (lib, extra, usage) = match world {
        ScaffoldWorld::Sensor => (
            format!(include_str!("scaffold/sensor.rs.tmpl"), name = name),
            String::new(),
            format!(
                "A device reads it as a sensor:\n\n    curl -X POST http://127.0.0.1:8080/api/v1/devices -H 'content-type: application/json' \\\n      -d '{{\"id\": \"d-1\", \"sensors\": [{{\"plugin\": \"{name}\", \"interval_ms\": 1000, \"config\": {{\"mean\": 20}}}}]}}'\n"
            ),
        ),
        ScaffoldWorld::CommandHandler => (
            format!(
                include_str!("scaffold/command-handler.rs.tmpl"),
                name = name
            ),
            "serde_json = { version = \"1\", default-features = false, features = [\"alloc\"] }\n"
                .to_string(),
            format!(
                "A simulated device answers commands with it:\n\n    curl -X POST http://127.0.0.1:8080/api/v1/devices -H 'content-type: application/json' \\\n      -d '{{\"id\": \"d-1\", \"command_handler\": \"{name}\"}}'\n    curl -X POST http://127.0.0.1:8080/api/v1/devices/d-1/commands -H 'content-type: application/json' \\\n      -d '{{\"name\": \"ping\"}}'\n"
            ),
        ),
        ScaffoldWorld::EdgeRule => (
            format!(include_str!("scaffold/edge-rule.rs.tmpl"), name = name),
            String::new(),
            format!(
                "An edge node runs it as a stage of its pipeline:\n\n    curl -X POST http://127.0.0.1:8080/api/v1/edge-nodes -H 'content-type: application/json' \\\n      -d '{{\"id\": \"n-1\", \"devices\": {{\"ids\": [\"d-1\"]}}, \"rules\": [{{\"plugin\": \"{name}\", \"config\": {{\"deadband\": 0.5}}}}]}}'\n"
            ),
        ),
    };
    let world_name = world.as_str();
    let files = [
        (
            PathBuf::from("Cargo.toml"),
            format!(
                include_str!("scaffold/Cargo.toml.tmpl"),
                name = name,
                world = world_name,
                sdk = sdk_toml,
                extra = extra,
            ),
        ),
        (
            PathBuf::from(".cargo/config.toml"),
            include_str!("scaffold/config.toml.tmpl").to_string(),
        ),
        (PathBuf::from(".gitignore"), "/target\n".to_string()),
        (
            PathBuf::from("README.md"),
            format!(
                include_str!("scaffold/README.md.tmpl"),
                name = name,
                world = world_name,
                file = file,
                usage = usage,
            ),
        ),
        (PathBuf::from("src/lib.rs"), lib),
    ];
    for (path, text) in files {
        let path = dir.join(path);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, text));
        written.map_err(|source| ScaffoldError::Write { path, source })?;
    }
    Ok(Scaffold {
        dir,
        artifact: PathBuf::from(format!("target/wasm32-wasip2/release/{file}.wasm")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_folders_are_checked_before_anything_is_written() {
        let parent = tempfile::tempdir().unwrap();
        let sdk = Path::new(SDK_DIR);
        for bad in ["", "1st", "My-Plugin", "a/b", &"x".repeat(65)] {
            let e = create(bad, ScaffoldWorld::Sensor, parent.path(), sdk).unwrap_err();
            assert!(matches!(e, ScaffoldError::Name(_)), "{bad}: {e}");
        }
        let e = create("p", ScaffoldWorld::Sensor, parent.path(), parent.path()).unwrap_err();
        assert!(e.to_string().contains("--sdk"), "{e}");
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);

        let made = create("my-probe", ScaffoldWorld::EdgeRule, parent.path(), sdk).unwrap();
        assert_eq!(
            made.artifact,
            Path::new("target/wasm32-wasip2/release/my_probe.wasm")
        );
        let manifest = std::fs::read_to_string(made.dir.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains("features = [\"edge-rule\"]"),
            "{manifest}"
        );
        let e = create("my-probe", ScaffoldWorld::Sensor, parent.path(), sdk).unwrap_err();
        assert!(matches!(e, ScaffoldError::Exists(_)), "{e}");
    }
}
