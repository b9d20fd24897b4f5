//! Builds the plugins in `plugins/` (a cargo workspace of their own) for
//! `wasm32-wasip2` and generates `plugins.rs` in OUT_DIR: the shipped
//! plugins embedded as bytes, and the folder holding the test plugins.
//!
//! The nested build gets its own target dir under OUT_DIR (the outer one is
//! locked by the running cargo) and none of the host's rustflags.
//!
//! Progress: cargo keeps a build script's output to itself until the script
//! ends (and replays a `cargo:warning` on every later build), and the first
//! plugin build takes minutes, so each crate the nested build compiles is
//! written to the terminal (`/dev/tty`, when there is one) as it starts,
//! with the time taken at the end. Without a terminal (CI) cargo's own
//! progress line shows `iotmock(build)` running; the nested build's full
//! output is in the build script's stderr (`cargo build -vv`).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let plugins = manifest_dir.join("plugins");
    println!("cargo:rerun-if-changed=plugins/Cargo.toml");
    println!("cargo:rerun-if-changed=plugins/Cargo.lock");
    println!("cargo:rerun-if-changed=plugins/.cargo/config.toml");
    println!("cargo:rerun-if-changed=wit");

    ensure_target();

    let target_dir = out_dir.join("plugins-target");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&plugins)
        .args(["build", "--release", "--workspace", "--target", TARGET])
        .env("CARGO_TARGET_DIR", &target_dir);
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    // Coverage (`.ci/coverage`) instruments the server through a rustc
    // wrapper; the plugins are wasm and cannot carry the profiler runtime.
    if env::var_os("__CARGO_LLVM_COV_RUSTC_WRAPPER").is_some() {
        cmd.env_remove("RUSTC_WRAPPER");
        for (var, _) in env::vars_os() {
            if var.to_string_lossy().starts_with("__CARGO_LLVM_COV") {
                cmd.env_remove(var);
            }
        }
    }
    let started = Instant::now();
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .expect("could not run cargo to build plugins/");
    let mut tty = fs::OpenOptions::new().write(true).open("/dev/tty").ok();
    let mut compiled = 0;
    for line in BufReader::new(child.stderr.take().expect("piped stderr")).lines() {
        let Ok(line) = line else { break };
        // Kept for `cargo build -vv` and for a failed build's report.
        eprintln!("{line}");
        let line = line.trim_start();
        if line.starts_with("Compiling ") {
            if compiled == 0
                && let Some(tty) = tty.as_mut()
            {
                let _ = writeln!(
                    tty,
                    "   iotmock: building the plugins in plugins/ for {TARGET} (minutes the first time, then cached)"
                );
            }
            compiled += 1;
            if let Some(tty) = tty.as_mut() {
                let _ = writeln!(tty, "   iotmock: plugins/ {line}");
            }
        }
    }
    let status = child
        .wait()
        .expect("could not wait for cargo building plugins/");
    if !status.success() {
        panic!("building the plugins in plugins/ for {TARGET} failed (see the errors above)");
    }
    if compiled > 0
        && let Some(tty) = tty.as_mut()
    {
        let _ = writeln!(
            tty,
            "   iotmock: plugins/ built ({compiled} crates, {:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }

    let release = target_dir.join(TARGET).join("release");
    let mut shipped = Vec::new();
    for entry in fs::read_dir(&release).expect("plugin output folder") {
        let path = entry.unwrap().path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("wasm") => {
                let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
                if !stem.starts_with("test_") {
                    shipped.push((stem.replace('_', "-"), path.clone()));
                }
            }
            Some("d") => rerun_from_depfile(&path),
            _ => {}
        }
    }
    shipped.sort();

    let mut code = String::new();
    code.push_str("/// The plugins that ship with iotmock: (name, component bytes).\n");
    code.push_str("pub(crate) const BUILTIN: &[(&str, &[u8])] = &[\n");
    for (name, path) in &shipped {
        writeln!(
            code,
            "    ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    code.push_str("];\n");
    code.push_str("/// Folder holding the test plugins (`test_*.wasm`) built with the server.\n");
    writeln!(
        code,
        "pub const TEST_PLUGINS_DIR: &str = {:?};",
        release.display().to_string()
    )
    .unwrap();
    fs::write(out_dir.join("plugins.rs"), code).unwrap();
    // The same folder for the integration tests, which see only the
    // library's public API: `env!("IOTMOCK_PLUGINS_DIR")`.
    println!("cargo:rustc-env=IOTMOCK_PLUGINS_DIR={}", release.display());
}

/// Makes sure the standard library for wasm32-wasip2 is installed, adding it
/// with rustup when it is missing: rust-toolchain.toml names the target, but
/// rustup does not fetch it when automatic installs are turned off.
fn ensure_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("could not run rustc");
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim().to_string());
    if sysroot.join("lib/rustlib").join(TARGET).exists() {
        return;
    }
    println!("cargo:warning=installing the {TARGET} target with rustup (needed to build plugins/)");
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", TARGET]);
    if let Ok(toolchain) = env::var("RUSTUP_TOOLCHAIN") {
        cmd.args(["--toolchain", &toolchain]);
    }
    let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
    if !ok || !sysroot.join("lib/rustlib").join(TARGET).exists() {
        panic!(
            "the Rust target {TARGET} is not installed and `rustup target add {TARGET}` failed; \
             iotmock builds its plugins for it. Install it (rustup target add {TARGET}) and build again."
        );
    }
}

/// Reruns the build script when any source a plugin was built from changes.
fn rerun_from_depfile(path: &Path) {
    let Ok(text) = fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        let Some((_, deps)) = line.split_once(": ") else {
            continue;
        };
        for dep in deps.split_whitespace() {
            if !dep.contains("/.cargo/registry/") {
                println!("cargo:rerun-if-changed={dep}");
            }
        }
    }
}
