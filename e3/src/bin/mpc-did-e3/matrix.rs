//! The plan (what runs), the loop (topologies, delay lines, runs, progress), the CSV.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mpc_did_e3::workload::{Program, Size, Workload};
use mpc_did_e3::{check_available, DelayLine, E3Error, NatKind, Topology};

use crate::mediated::Mediator;
use crate::modes::{self, Mode, Outcome};
use crate::report;

/// Why the matrix could not run (a failed *run* is a CSV row, not an error).
#[derive(Debug, thiserror::Error)]
pub(crate) enum MatrixError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    E3(#[from] E3Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("interrupted")]
    Interrupted,
}

/// A region layout: one-way access delay per host, assigned round-robin over its regions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    /// (region, one-way access delay in µs) — hosts are spread evenly over these.
    pub(crate) regions: &'static [(&'static str, u64)],
}

/// The four layouts of the thesis's plan, with one-way delays derived from Microsoft's
/// published Azure inter-region round-trip times (spec/e3.md §4 cites the table and the
/// arithmetic: between hosts with lines a and b the RTT is 2·(a + b)).
pub(crate) const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "one-region",
        regions: &[("westeurope", 250)],
    },
    Scenario {
        name: "two-near",
        regions: &[("westeurope", 4_500), ("northeurope", 4_500)],
    },
    Scenario {
        name: "two-distant",
        regions: &[("westeurope", 20_500), ("eastus", 20_500)],
    },
    Scenario {
        name: "several-distant",
        regions: &[
            ("westeurope", 4_500),
            ("eastus", 36_500),
            ("southeastasia", 74_500),
        ],
    },
];

impl Scenario {
    /// Host `i`'s one-way delay.
    pub(crate) fn delay(&self, i: usize) -> Duration {
        let (_, us) = self.regions[i % self.regions.len()];
        Duration::from_micros(us)
    }
}

/// One run of the matrix.
#[derive(Debug, Clone)]
pub(crate) struct RunSpec {
    pub(crate) workload: Workload,
    pub(crate) parties: usize,
    pub(crate) scenario: Scenario,
    pub(crate) mode: Mode,
    pub(crate) rep: u32,
}

/// What runs.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) kind: &'static str,
    pub(crate) runs: Vec<RunSpec>,
    pub(crate) run_timeout: Duration,
}

impl Plan {
    pub(crate) fn new(full: bool, reps: Option<u32>, only: &[String], timeout_s: u64) -> Self {
        let (kind, sizes, parties, scenarios, reps): (_, &[Size], &[usize], &[Scenario], u32) =
            if full {
                (
                    "full",
                    &Size::ALL,
                    &[2, 3, 5, 10],
                    &SCENARIOS,
                    reps.unwrap_or(3),
                )
            } else {
                (
                    "quick",
                    &[Size::Low],
                    &[3, 4],
                    &SCENARIOS[..2],
                    reps.unwrap_or(1),
                )
            };
        let wanted =
            |m: &Mode| only.is_empty() || only.iter().any(|o| m.name().contains(o.as_str()));
        // --quick runs the mediator modes only in the extra group below.
        let modes: Vec<Mode> = Mode::ALL
            .into_iter()
            .filter(|m| full || !m.needs_mediator())
            .filter(wanted)
            .collect();
        let mut runs = Vec::new();
        // Topology-major order: one topology (parties × scenario) serves all its runs; modes
        // alternate within each repetition so drift on the machine hits every mode alike.
        for &n in parties {
            for s in scenarios {
                for p in Program::ALL {
                    for &size in sizes {
                        for rep in 0..reps.max(1) {
                            for k in 0..modes.len() {
                                let mode = modes[(k + rep as usize) % modes.len()];
                                runs.push(RunSpec {
                                    workload: Workload::new(p, size),
                                    parties: n,
                                    scenario: *s,
                                    mode,
                                    rep,
                                });
                            }
                        }
                    }
                }
            }
        }
        if !full {
            // The NAT path kinds and DIDComm through the mediator in the smallest group
            // that communicates: Secret Santa at its low size with 3 parties in one region
            // (with 2, MPyC's threshold is 0 and Secret Santa sends no share traffic at
            // all); plain MPyC of the same group above is the baseline (spec/e3.md §4.1).
            let extra: Vec<Mode> = Mode::MEDIATED.into_iter().filter(wanted).collect();
            for rep in 0..reps.max(1) {
                for k in 0..extra.len() {
                    runs.push(RunSpec {
                        workload: Workload::new(Program::SecretSanta, Size::Low),
                        parties: 3,
                        scenario: SCENARIOS[0],
                        mode: extra[(k + rep as usize) % extra.len()],
                        rep,
                    });
                }
            }
        }
        Self {
            kind,
            runs,
            run_timeout: Duration::from_secs(timeout_s.max(10)),
        }
    }
}

/// One CSV row.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) spec: RunSpec,
    pub(crate) outcome: Outcome,
}

pub(crate) const CSV_HEADER: &str =
    "workload,size,parties,scenario,rtt_max_ms,nat,mode,repetition,\
status,wall_s,mpyc_s,wire_bytes,mpyc_bytes,setup_s,path_kinds,error";

impl Row {
    fn csv(&self) -> String {
        let s = &self.spec;
        let o = &self.outcome;
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
        format!(
            "{},{},{},{},{:.1},{},{},{},{},{},{},{},{},{},{},{}",
            s.workload.program.name(),
            s.workload.size.name(),
            s.parties,
            s.scenario.name,
            rtt_max(&s.scenario, s.parties).as_secs_f64() * 1e3,
            s.mode.nat(),
            s.mode.name(),
            s.rep,
            if o.error.is_some() { "failed" } else { "ok" },
            opt(o.wall.map(|d| d.as_secs_f64())),
            opt(o.mpyc.map(|d| d.as_secs_f64())),
            o.wire_bytes.map_or(String::new(), |b| b.to_string()),
            o.mpyc_bytes.map_or(String::new(), |b| b.to_string()),
            opt(o.setup.map(|d| d.as_secs_f64())),
            csv_field(&o.paths.join(" ")),
            csv_field(o.error.as_deref().unwrap_or("")),
        )
    }
}

/// The largest RTT between two of `n` hosts of the scenario.
pub(crate) fn rtt_max(s: &Scenario, n: usize) -> Duration {
    let mut max = Duration::ZERO;
    for i in 0..n {
        for j in i + 1..n {
            max = max.max((s.delay(i) + s.delay(j)) * 2);
        }
    }
    max
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\"").replace('\n', " "))
    } else {
        s.to_owned()
    }
}

/// Set by SIGINT/SIGTERM; every wait polls it.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// A thread with a small runtime that waits for SIGINT or SIGTERM and raises the flag.
fn watch_signals() -> Result<(), MatrixError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async {
                let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                else {
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                eprintln!("\nmpc-did-e3: stopping: cleaning up namespaces, tunnels and processes");
                INTERRUPTED.store(true, Ordering::Relaxed);
            });
        })?;
    Ok(())
}

/// What must be installed, each with the package that brings it.
fn check_tools(python: &Path, plan: &Plan) -> Result<(), MatrixError> {
    check_available().map_err(|e| MatrixError::Unavailable(format!("{e}")))?;
    for (tool, arg, package) in [
        ("wireguard-go", "--version", "wireguard-go"),
        ("wg", "--version", "wireguard-tools"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
        if !ok {
            return Err(MatrixError::Unavailable(format!(
                "`{tool}` not found: apt-get install --no-install-recommends {package}"
            )));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(MatrixError::Unavailable(
            "/dev/net/tun is missing: wireguard-go needs the TUN device".into(),
        ));
    }
    let ok = Command::new(python)
        .args(["-c", "import mpyc, numpy, matplotlib, sklearn"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err(MatrixError::Unavailable(format!(
            "{} lacks mpyc, numpy, matplotlib or scikit-learn: \
             pip install -r python-requirements.txt (or set MPC_DID_PYTHON)",
            python.display()
        )));
    }
    if plan.runs.iter().any(|r| r.mode.needs_mediator()) {
        crate::mediated::mediator_bin().map_err(MatrixError::Unavailable)?;
    }
    Ok(())
}

/// `MPC_DID_PYTHON`, else the repository's `.venv`, else `python3`.
pub(crate) fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MPC_DID_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Host names in the topology: `h0`, `h1`, ...
pub(crate) fn host_name(i: usize) -> String {
    format!("h{i}")
}

/// A topology of `n` hosts (public, or each behind its own NAT) with the scenario's delay
/// lines on the hosts, and the mediator in the public namespace once a mode needs it.
/// Fields drop in this order: the mediator, the delay lines, then the namespaces.
struct Net {
    mediator: Option<Mediator>,
    lines: Vec<DelayLine>,
    topo: Topology,
}

fn build_net(n: usize, s: &Scenario, nat: Option<NatKind>) -> Result<Net, MatrixError> {
    let mut b = Topology::builder();
    for i in 0..n {
        b = b.host(&host_name(i), nat.unwrap_or(NatKind::None));
    }
    let topo = b.build()?;
    let mut lines = Vec::new();
    for i in 0..n {
        let host = topo
            .host(&host_name(i))
            .ok_or_else(|| MatrixError::Unavailable("topology lost a host".into()))?;
        lines.push(host.ns.delay(s.delay(i))?);
    }
    Ok(Net {
        mediator: None,
        lines,
        topo,
    })
}

pub(crate) fn run(plan: &Plan, out: &Path) -> Result<(), MatrixError> {
    let python = python();
    check_tools(&python, plan)?;
    watch_signals()?;
    std::fs::create_dir_all(out)?;
    let csv_path = out.join("results.csv");
    let mut csv = std::fs::File::create(&csv_path)?;
    writeln!(csv, "{CSV_HEADER}")?;
    let total = plan.runs.len();
    println!(
        "mpc-did-e3 matrix --{}: {total} runs → {}",
        plan.kind,
        out.display()
    );
    let started = Instant::now();
    let mut rows = Vec::new();
    // The topologies of the current (parties, scenario), one per NAT kind ("none", "eim",
    // "symmetric"), built when a mode first needs them.
    let mut group: Option<(usize, &'static str)> = None;
    let mut nets: BTreeMap<&'static str, Net> = BTreeMap::new();
    for (k, spec) in plan.runs.iter().enumerate() {
        if interrupted() {
            finish_nets(&mut nets);
            return Err(MatrixError::Interrupted);
        }
        if group != Some((spec.parties, spec.scenario.name)) {
            finish_nets(&mut nets);
            group = Some((spec.parties, spec.scenario.name));
        }
        let key = spec.mode.nat();
        if !nets.contains_key(key) {
            // On an error the other topologies drop (mediator, lines, namespaces, in order).
            let built = build_net(spec.parties, &spec.scenario, spec.mode.nat_kind())?;
            nets.insert(key, built);
        }
        let Some(current) = nets.get_mut(key) else {
            return Err(MatrixError::Unavailable("no topology".into()));
        };
        let mut mediator_error = None;
        if spec.mode.needs_mediator() && current.mediator.is_none() {
            match Mediator::start(&current.topo) {
                Ok(m) => current.mediator = Some(m),
                Err(e) => mediator_error = Some(format!("mediator: {e}")),
            }
        }
        let outcome = match mediator_error {
            Some(e) => Outcome {
                error: Some(e),
                ..Outcome::default()
            },
            None => modes::run(spec, &current.topo, &python, plan.run_timeout),
        };
        if interrupted() {
            finish_nets(&mut nets);
            return Err(MatrixError::Interrupted);
        }
        let row = Row {
            spec: spec.clone(),
            outcome,
        };
        writeln!(csv, "{}", row.csv())?;
        csv.flush()?;
        let done = k + 1;
        let elapsed = started.elapsed();
        let eta = elapsed.mul_f64((total - done) as f64 / done as f64);
        let mut line = format!(
            "[{done}/{total}] {} n={} {} {} rep {}: ",
            spec.workload,
            spec.parties,
            spec.scenario.name,
            spec.mode.name(),
            spec.rep
        );
        match (&row.outcome.error, row.outcome.wall) {
            (Some(e), _) => {
                let _ = write!(line, "FAILED ({e})");
            }
            (None, Some(w)) => {
                let _ = write!(line, "{:.2} s", w.as_secs_f64());
            }
            (None, None) => line.push_str("ok"),
        }
        let _ = write!(
            line,
            " | elapsed {} | about {} left",
            hms(elapsed),
            hms(eta)
        );
        println!("{line}");
        rows.push(row);
    }
    finish_nets(&mut nets);
    report::write(plan, &rows, out, &python)?;
    println!(
        "done in {}: {} ({} runs, {} failed), {}",
        hms(started.elapsed()),
        csv_path.display(),
        rows.len(),
        rows.iter().filter(|r| r.outcome.error.is_some()).count(),
        out.join("report.md").display()
    );
    Ok(())
}

fn finish_nets(nets: &mut BTreeMap<&'static str, Net>) {
    for (_, net) in std::mem::take(nets) {
        finish_net(net);
    }
}

fn finish_net(net: Net) {
    // The mediator first (it runs in the topology's public namespace), then the delay
    // lines, then the namespaces.
    drop(net.mediator);
    for line in net.lines {
        if let Err(e) = line.finish() {
            eprintln!("mpc-did-e3: stopping a delay line: {e}");
        }
    }
    drop(net.topo);
}

pub(crate) fn hms(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}
