//! The `iotmock` binary started as a user starts it: the command with the
//! loopback ephemeral ports every process test uses, its first stdout line
//! (the ready line, or nothing when it stops instead) and a SIGTERM stop,
//! so each test says only what differs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_iotmock");

/// `serve` flags that put both listeners on ephemeral loopback ports, so
/// tests running in parallel never clash.
pub const EPHEMERAL: [&str; 4] = ["--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"];

/// `iotmock serve` on ephemeral loopback ports; callers add the rest.
pub fn serve_ephemeral() -> Command {
    let mut command = Command::new(BIN);
    command.arg("serve").args(EPHEMERAL);
    command
}

/// The first line the child writes to its piped stdout: the ready line, or
/// an empty string when it exits first.
pub fn read_ready_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .unwrap();
    line
}

/// Sends SIGTERM (the way a user stops it) and waits for the exit.
pub fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
