//! The Veramo side of the interop tests (shared by `crates/didcomm/tests/interop_veramo.rs`
//! and `mediator/tests/interop_veramo_mediation.rs` through `#[path]`): finds `node` and the
//! installed `@veramo/did-comm` in this directory, and runs `peer.mjs` with one JSON
//! request on stdin, one JSON answer on stdout. Each test passes this directory's path
//! (relative to its own crate) and a label for its `SKIPPED:` line.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

/// `node` and the installed peer in `dir`, or `None` (skip, printing `SKIPPED: <what>`) /
/// panic (`MPC_DID_REQUIRE_INTEROP=1`).
pub fn veramo(dir: &str, what: &str) -> Option<String> {
    let node = std::env::var("MPC_DID_NODE").unwrap_or_else(|_| "node".into());
    let has_node = Command::new(&node)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let installed = Path::new(dir)
        .join("node_modules/@veramo/did-comm")
        .is_dir();
    if has_node && installed {
        return Some(node);
    }
    let why = if has_node {
        format!("run `npm ci` in {dir}")
    } else {
        "no `node` on PATH (set MPC_DID_NODE)".into()
    };
    assert!(
        std::env::var("MPC_DID_REQUIRE_INTEROP").as_deref() != Ok("1"),
        "MPC_DID_REQUIRE_INTEROP=1 but the Veramo peer is missing: {why}"
    );
    eprintln!("SKIPPED: {what} ({why})");
    None
}

/// Runs `peer.mjs` in `dir` with `req`; its JSON answer.
pub fn peer(node: &str, dir: &str, req: &Value) -> Value {
    let mut child = Command::new(node)
        .arg("peer.mjs")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start node");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(req.to_string().as_bytes())
        .expect("write request");
    let out = child.wait_with_output().expect("veramo peer");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "veramo peer: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
