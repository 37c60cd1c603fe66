//! `mpc-did bench local` (issue 15 item 6): the report is complete and consistent. Speed
//! figures themselves live in benchmarks, never in tests: nothing here checks a timing
//! against a threshold, only that every case was measured and the derived columns agree.
#![allow(clippy::unwrap_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mpc-did");
const MODES: [&str; 6] = [
    "didcomm plaintext",
    "didcomm signed (EdDSA)",
    "didcomm anoncrypt",
    "didcomm authcrypt",
    "didcomm signed+authcrypt",
    "session record",
];

fn bench(args: &[&str]) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(BIN)
        .arg("--home")
        .arg(home.path())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn json_report_has_every_size_and_mode_with_consistent_columns() {
    let out = bench(&["--json", "bench", "local", "--budget-ms", "20"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3 * MODES.len());
    for size in [64, 1024, 65536] {
        for mode in MODES {
            let r = rows
                .iter()
                .find(|r| r["payload_bytes"] == size && r["mode"] == mode)
                .unwrap_or_else(|| panic!("no row for {mode} at {size} B"));
            let ns = r["ns_per_message"].as_f64().unwrap();
            let per_s = r["messages_per_second"].as_f64().unwrap();
            assert!(ns > 0.0 && ns.is_finite(), "{r}");
            // messages/s is the inverse of the time per message.
            assert!((per_s * ns / 1e9 - 1.0).abs() < 1e-6, "{r}");
            let op = if mode == "session record" {
                "seal+open"
            } else {
                "pack+unpack"
            };
            assert_eq!(r["operation"], op);
        }
        let session = rows
            .iter()
            .find(|r| r["payload_bytes"] == size && r["mode"] == "session record")
            .unwrap();
        assert_eq!(session["ratio_to_session"].as_f64(), Some(1.0));
        for r in rows.iter().filter(|r| r["payload_bytes"] == size) {
            let ratio = r["ratio_to_session"].as_f64().unwrap();
            let expect =
                r["ns_per_message"].as_f64().unwrap() / session["ns_per_message"].as_f64().unwrap();
            assert!((ratio / expect - 1.0).abs() < 1e-9, "{r}");
        }
    }
    let hs = v["handshake_ns"].as_f64().unwrap();
    assert!(hs > 0.0 && hs.is_finite());
    assert_eq!(v["budget_ms"], 20);
}

#[test]
fn table_names_every_case() {
    let out = bench(&["bench", "local", "--budget-ms", "20"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for size in ["64 B", "1 KiB", "64 KiB"] {
        for mode in MODES {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("| {size} | {mode} |"))),
                "no line for {mode} at {size}:\n{text}"
            );
        }
    }
    assert!(text.contains("Session handshake"), "{text}");
    assert!(!text.contains("Some(") && !text.contains("None"), "{text}");
}

#[test]
fn refuses_a_budget_out_of_range() {
    let out = bench(&["bench", "local", "--budget-ms", "5"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--budget-ms must be between 20 and 60000"),
        "{err}"
    );
}
