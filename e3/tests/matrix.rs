//! The evaluation matrix (spec/e3.md §4) as a user runs it: the real `mpc-did-e3` binary.
//!
//! - it refuses to start without a tool it needs and names the package (§4.4);
//! - Ctrl-C in the middle of a WireGuard run removes the namespaces, the tunnels and the
//!   processes, and exits 130; in the middle of a mediator mode it stops the mediator
//!   (§4.4); a mediator that fails to start gives a failed row, not a dropped run;
//! - `--quick` writes a complete, sane report (§4.3): opt-in with `MPC_DID_E3_MATRIX=1`
//!   (about three minutes), as `test.sh` does when it runs as root.
//!
//! The last two need root, iproute2/iptables, wireguard-go/wireguard-tools and the
//! project's Python: they fail when `MPC_DID_REQUIRE_NETNS=1` and print `SKIPPED` otherwise.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mpc-did-e3");

fn python() -> PathBuf {
    std::env::var_os("MPC_DID_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

/// Whether this machine can run the matrix; `None` (after printing SKIPPED) when it cannot
/// and nothing requires it.
fn can_run(what: &str) -> Option<()> {
    let tools = ["wireguard-go", "wg"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    let py = Command::new(python())
        .args(["-c", "import mpyc, numpy, sklearn, matplotlib"])
        .status()
        .is_ok_and(|s| s.success());
    let why = match (mpc_did_e3::check_available(), tools, py) {
        (Err(e), _, _) => format!("{e}"),
        (_, false, _) => "wireguard-go/wireguard-tools not installed".to_owned(),
        (_, _, false) => "no Python with mpyc, numpy, scikit-learn, matplotlib".to_owned(),
        _ => match mediator() {
            Ok(()) => return Some(()),
            Err(e) => e,
        },
    };
    assert!(!mpc_did_e3::required(), "MPC_DID_REQUIRE_NETNS=1 but {why}");
    eprintln!("SKIPPED: {what}: {why}");
    None
}

/// The mediator modes run the real `mpc-did-mediator`, which the matrix finds next to its
/// own binary: build it there (same profile) when `cargo test -p mpc-did-e3` did not.
fn mediator() -> Result<(), String> {
    let dir = Path::new(BIN).parent().unwrap();
    if dir.join("mpc-did-mediator").is_file() {
        return Ok(());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "mpc-did-mediator"]);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    match cmd.status() {
        Ok(s) if s.success() && dir.join("mpc-did-mediator").is_file() => Ok(()),
        other => Err(format!("cannot build mpc-did-mediator: {other:?}")),
    }
}

/// spec/e3.md §4.4: a missing tool is named with its package before anything is created.
#[test]
fn refuses_to_start_without_its_tools() {
    let dir = tempfile::tempdir().unwrap();
    // A PATH with only iproute2 and iptables: WireGuard's tools are missing.
    for tool in ["ip", "iptables"] {
        if let Some(found) = which(tool) {
            std::os::unix::fs::symlink(found, dir.path().join(tool)).unwrap();
        }
    }
    let out = Command::new(BIN)
        .args(["matrix", "--quick", "--out"])
        .arg(dir.path().join("out"))
        .env("PATH", dir.path())
        .env("MPC_DID_PYTHON", python())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let root = rustix::process::geteuid().is_root();
    if root && which("ip").is_some() && which("iptables").is_some() {
        assert!(
            stderr.contains("apt-get install --no-install-recommends wireguard-go"),
            "{stderr}"
        );
    } else {
        assert!(
            stderr.contains("needs root") || stderr.contains("not found"),
            "{stderr}"
        );
    }
    assert!(
        !dir.path().join("out").exists(),
        "created output before checking its tools"
    );
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.is_file())
    })
}

fn namespaces_of(pid: u32) -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("e3-{pid}-")))
                .collect()
        })
        .unwrap_or_default()
}

fn wg_sockets_of(pid: u32) -> Vec<String> {
    let prefix = format!("e3w{}x", pid % 1_000_000);
    std::fs::read_dir("/var/run/wireguard")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Processes whose command line names one of this matrix's tunnels or its examples.
fn processes_of(pid: u32) -> Vec<String> {
    let iface = format!("e3w{}x", pid % 1_000_000);
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&iface) {
            found.push(cmd);
        }
    }
    found
}

fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// spec/e3.md §4.4: SIGINT while WireGuard tunnels and MPyC run leaves nothing behind.
#[test]
fn ctrl_c_removes_namespaces_tunnels_and_processes() {
    if can_run("matrix interrupt").is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["matrix", "--quick", "--mode", "wireguard", "--out"])
        .arg(out.path())
        .env("MPC_DID_PYTHON", python())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // The tunnels exist once wireguard-go is up in every namespace of the first run.
    let up = wait_until(Duration::from_secs(120), || {
        wg_sockets_of(pid).len() >= 2 && !namespaces_of(pid).is_empty()
    });
    assert!(up, "the matrix never brought its WireGuard mesh up");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let exited = wait_until(Duration::from_secs(60), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(exited, "the matrix did not stop within 60 s of SIGINT");
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        namespaces_of(pid).is_empty(),
        "namespaces left: {:?}",
        namespaces_of(pid)
    );
    assert!(
        wg_sockets_of(pid).is_empty(),
        "tunnels left: {:?}",
        wg_sockets_of(pid)
    );
    let gone = wait_until(Duration::from_secs(5), || processes_of(pid).is_empty());
    assert!(gone, "processes left: {:?}", processes_of(pid));
}

/// spec/e3.md §4.4 "Resuming": a second run into the same `--out` never truncates what is
/// there; `--resume` skips the runs already there, appends new ones, and reports on all.
#[test]
fn resume_keeps_earlier_rows_and_appends_new_ones() {
    if can_run("matrix --resume").is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let matrix = |mode: &str, resume: bool| {
        let mut c = Command::new(BIN);
        c.args([
            "matrix",
            "--quick",
            "--program",
            "secretsanta",
            "--parties",
            "3",
        ])
        .args(["--scenario", "one-region", "--mode", mode, "--out"])
        .arg(out.path())
        .env("MPC_DID_PYTHON", python());
        if resume {
            c.arg("--resume");
        }
        c.output().unwrap()
    };
    let csv = || std::fs::read_to_string(out.path().join("results.csv")).unwrap();
    let first = matrix("plain", false);
    assert!(first.status.success(), "{first:?}");
    let one = csv();
    assert_eq!(one.lines().count(), 2, "{one}");
    // Without --resume: refused with a sentence saying what to do, nothing changed.
    let again = matrix("plain", false);
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{err}");
    assert!(err.contains("--resume"), "{err}");
    assert_eq!(csv(), one);
    // With --resume, a done run is not done again.
    let same = matrix("plain", true);
    let said = String::from_utf8_lossy(&same.stdout);
    assert!(same.status.success(), "{same:?}");
    assert!(said.contains("0 left"), "{said}");
    assert_eq!(csv(), one);
    // Another mode into the same directory: appended; the report covers both.
    let more = matrix("ssl", true);
    assert!(more.status.success(), "{more:?}");
    let two = csv();
    assert!(two.starts_with(&one), "{two}");
    assert_eq!(two.lines().count(), 3, "{two}");
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for mode in ["| plain |", "| ssl |"] {
        assert!(md.contains(mode), "report lacks {mode}: {md}");
    }
    // The pivot: one row for the cell, plain's time, ssl's ratio, the other modes `–`.
    assert!(md.contains("## At a glance"), "{md}");
    let row = md
        .lines()
        .find(|l| l.starts_with("| secretsanta | low | one-region | 3 | "))
        .unwrap_or_else(|| panic!("no pivot row: {md}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert!(cells[5].ends_with(" s"), "plain's time: {row}");
    assert!(cells[6].ends_with('×'), "ssl's ratio: {row}");
    assert!(cells[7..cells.len() - 1].iter().all(|c| *c == "–"), "{row}");
}

/// `mpc-did-mediator` processes the matrix `pid` started (its children).
fn mediators_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(pid) && String::from_utf8_lossy(&cmd).contains("mpc-did-mediator") {
            found.push(child);
        }
    }
    found
}

/// spec/e3.md §4.4: SIGINT while a mediator mode runs stops the mediator too.
#[test]
fn ctrl_c_stops_the_mediator() {
    if can_run("matrix interrupt (mediator)").is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["matrix", "--quick", "--mode", "didcomm-mediated", "--out"])
        .arg(out.path())
        .env("MPC_DID_PYTHON", python())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let up = wait_until(Duration::from_secs(120), || !mediators_of(pid).is_empty());
    assert!(up, "the matrix never started its mediator");
    let mediators = mediators_of(pid);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let exited = wait_until(Duration::from_secs(60), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert!(exited, "the matrix did not stop within 60 s of SIGINT");
    assert_eq!(status.code(), Some(130));
    assert!(namespaces_of(pid).is_empty(), "{:?}", namespaces_of(pid));
    // Killed and reaped by the matrix before it exited (a mediator left running would
    // still exist, re-parented).
    let gone = wait_until(Duration::from_secs(5), || {
        mediators
            .iter()
            .all(|m| !Path::new(&format!("/proc/{m}")).exists())
    });
    assert!(gone, "mediators left: {mediators:?}");
}

/// spec/e3.md §4.4: a mediator mode whose mediator cannot start is a CSV row marked
/// failed with the reason, not a dropped run, and the matrix still ends normally and leaves
/// no namespace behind.
#[test]
fn a_mediator_that_fails_gives_a_failed_row() {
    if can_run("matrix mediator failure").is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .args(["matrix", "--quick", "--mode", "session-relay", "--out"])
        .arg(out.path())
        .env("MPC_DID_PYTHON", python())
        // A "mediator" that exits at once.
        .env("MPC_DID_MEDIATOR", which("false").unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let run = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let csv = std::fs::read_to_string(out.path().join("results.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{csv}");
    assert!(
        rows[0].contains(",session-relay,") && rows[0].contains(",failed,"),
        "{csv}"
    );
    assert!(rows[0].contains("mediator exited at start"), "{csv}");
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("## Failed runs"), "{md}");
    assert!(
        namespaces_of(pid).is_empty(),
        "namespaces left: {:?}",
        namespaces_of(pid)
    );
}

/// spec/e3.md §4.3: `--quick` writes one row per planned run, every run succeeds, the
/// figures are sane, the report has every group and mode, and the plots are PNGs.
#[test]
fn quick_matrix_writes_a_complete_sane_report() {
    // Check the output of a --quick run made by hand (no root needed for this part).
    if let Some(dir) = std::env::var_os("MPC_DID_E3_MATRIX_CHECK") {
        check_report(Path::new(&dir));
        return;
    }
    if std::env::var("MPC_DID_E3_MATRIX").as_deref() != Ok("1") {
        eprintln!("SKIPPED: matrix --quick takes minutes: set MPC_DID_E3_MATRIX=1");
        return;
    }
    if can_run("matrix --quick").is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(BIN)
        .args(["matrix", "--quick", "--out"])
        .arg(out.path())
        .env("MPC_DID_PYTHON", python())
        .status()
        .unwrap();
    assert!(status.success());
    check_report(out.path());
}

fn check_report(dir: &Path) {
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    // 2 programs × 1 size × parties {3, 4} × 2 scenarios × 5 modes × 1 repetition, plus
    // the 3 mediator modes for Secret Santa, 3 parties, one region (§4.1).
    assert_eq!(rows.len(), 2 * 2 * 2 * 5 + 3, "{csv}");
    let modes = [
        "plain",
        "ssl",
        "wireguard",
        "session-direct",
        "didcomm-direct",
        "session-punched",
        "session-relay",
        "didcomm-mediated",
    ];
    for r in &rows {
        assert_eq!(r[col("status")], "ok", "failed run: {r:?}");
        let f = |c: &str| r[col(c)].parse::<f64>().unwrap();
        let (wall, mpyc) = (f("wall_s"), f("mpyc_s"));
        assert!(mpyc > 0.0 && wall >= mpyc, "{r:?}");
        // The wire carries at least MPyC's payload (plus headers and encryption).
        assert!(
            f("wire_bytes") >= f("mpyc_bytes") && f("mpyc_bytes") > 0.0,
            "{r:?}"
        );
        assert!(modes.contains(&r[col("mode")]), "{r:?}");
        assert!(!r[col("path_kinds")].is_empty(), "{r:?}");
        if matches!(
            r[col("mode")],
            "wireguard" | "session-direct" | "didcomm-direct" | "session-punched" | "session-relay"
        ) {
            assert!(f("setup_s") > 0.0, "{r:?}");
        }
        // The NAT modes ran behind their NATs on the path kind they are named after, one
        // entry per pair of the 3 parties (§4.2).
        let (nat, paths) = (r[col("nat")], r[col("path_kinds")]);
        match r[col("mode")] {
            "session-punched" => {
                assert_eq!(nat, "eim", "{r:?}");
                assert_eq!(paths, "0-1:quic 0-2:quic 1-2:quic", "{r:?}");
            }
            "session-relay" => {
                assert_eq!(nat, "symmetric", "{r:?}");
                assert_eq!(paths, "0-1:relay 0-2:relay 1-2:relay", "{r:?}");
            }
            "didcomm-mediated" => assert_eq!(paths, "didcomm-authcrypt-mediated", "{r:?}"),
            _ => assert_eq!(nat, "none", "{r:?}"),
        }
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(!md.contains("Plotting failed"), "{md}");
    for mode in &modes[5..] {
        let row = "| secretsanta | low | 3 | one-region |";
        assert!(
            md.lines()
                .any(|l| l.starts_with(row) && l.contains(&format!("| {mode} |"))),
            "report lacks {row} {mode}"
        );
    }
    assert!(
        md.contains("Tailscale"),
        "report lacks the on-paper Tailscale row"
    );
    for scenario in ["one-region", "two-near"] {
        for program in ["secretsanta", "cnn"] {
            for mode in &modes[..5] {
                let row = format!("| {program} | low | 3 | {scenario} |");
                assert!(
                    md.lines()
                        .any(|l| l.starts_with(&row) && l.contains(&format!("| {mode} |"))),
                    "report lacks {row} {mode}"
                );
            }
        }
    }
    for png in [
        "time_vs_parties.png",
        "bytes_per_mode.png",
        "setup_per_mode.png",
    ] {
        let bytes = std::fs::read(dir.join(png)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{png}"
        );
        assert!(
            md.contains(&format!("({png})")),
            "report does not show {png}"
        );
    }
}
