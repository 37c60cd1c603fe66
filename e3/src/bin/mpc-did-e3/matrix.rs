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
    /// `--out` already holds results and `--resume` was not given.
    #[error("{0}")]
    Exists(String),
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

/// The party counts of `--full`.
pub(crate) const FULL_PARTIES: [usize; 4] = [2, 3, 5, 10];

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
                    &FULL_PARTIES,
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

/// A run's identity in `results.csv`: what `--resume` skips when it is there with status ok.
pub(crate) type RunKey = (
    &'static str,
    &'static str,
    usize,
    &'static str,
    &'static str,
    u32,
);

impl RunSpec {
    pub(crate) fn key(&self) -> RunKey {
        (
            self.workload.program.name(),
            self.workload.size.name(),
            self.parties,
            self.scenario.name,
            self.mode.name(),
            self.rep,
        )
    }
}

/// Splits one CSV line as [`Row::csv`] writes it: fields with a comma or a quote are quoted,
/// quotes doubled.
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, ',') => fields.push(std::mem::take(&mut cur)),
            (false, '"') if cur.is_empty() => quoted = true,
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => {
                quoted = false;
                if !matches!(chars.peek(), None | Some(',')) {
                    return Err("text after a closing quote".into());
                }
            }
            (_, c) => cur.push(c),
        }
    }
    if quoted {
        return Err("a quoted field does not end".into());
    }
    fields.push(cur);
    Ok(fields)
}

impl Row {
    /// Reads back a line of `results.csv` (the columns of [`CSV_HEADER`]).
    pub(crate) fn parse(line: &str) -> Result<Row, String> {
        let f = split_csv(line)?;
        let n = CSV_HEADER.split(',').count();
        if f.len() != n {
            return Err(format!("{} fields, expected {n}", f.len()));
        }
        let pick = |what: &str, v: &str, names: &[&'static str]| {
            names
                .iter()
                .position(|x| *x == v)
                .ok_or_else(|| format!("unknown {what} `{v}`"))
        };
        let program = Program::ALL[pick("workload", &f[0], &Program::ALL.map(|p| p.name()))?];
        let size = Size::ALL[pick("size", &f[1], &Size::ALL.map(|s| s.name()))?];
        let parties: usize = f[2]
            .parse()
            .map_err(|_| format!("parties `{}` is not a number", f[2]))?;
        let scenario = SCENARIOS[pick("scenario", &f[3], &SCENARIOS.map(|s| s.name))?];
        let mode = Mode::ALL[pick("mode", &f[6], &Mode::ALL.map(|m| m.name()))?];
        let rep: u32 = f[7]
            .parse()
            .map_err(|_| format!("repetition `{}` is not a number", f[7]))?;
        let secs = |i: usize| -> Result<Option<Duration>, String> {
            if f[i].is_empty() {
                return Ok(None);
            }
            f[i].parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| Some(Duration::from_secs_f64(v)))
                .ok_or_else(|| format!("`{}` is not a time in seconds", f[i]))
        };
        let count = |i: usize| -> Result<Option<u64>, String> {
            if f[i].is_empty() {
                return Ok(None);
            }
            f[i].parse()
                .map(Some)
                .map_err(|_| format!("`{}` is not a byte count", f[i]))
        };
        let error = match f[8].as_str() {
            "ok" => None,
            "failed" if f[15].is_empty() => Some("failed".to_owned()),
            "failed" => Some(f[15].clone()),
            other => return Err(format!("status `{other}` is neither ok nor failed")),
        };
        Ok(Row {
            spec: RunSpec {
                workload: Workload::new(program, size),
                parties,
                scenario,
                mode,
                rep,
            },
            outcome: Outcome {
                wall: secs(9)?,
                mpyc: secs(10)?,
                wire_bytes: count(11)?,
                mpyc_bytes: count(12)?,
                setup: secs(13)?,
                paths: f[14].split_whitespace().map(str::to_owned).collect(),
                error,
            },
        })
    }
}

/// The rows already in `results.csv`. A last line without its newline is what a crash in
/// the middle of a write leaves: it is dropped with a warning (that run is done again); any
/// other unreadable line is an error naming it.
fn read_rows(path: &Path) -> Result<Vec<Row>, MatrixError> {
    let text = std::fs::read_to_string(path)?;
    let mut lines: Vec<&str> = text.split('\n').collect();
    let complete_end = text.ends_with('\n');
    if let Some(last) = lines.pop() {
        if !complete_end && !last.is_empty() {
            eprintln!(
                "mpc-did-e3: {}: dropping an unfinished last line (a run interrupted while                  its row was written); that run is done again",
                path.display()
            );
        }
    }
    let mut rows = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if i == 0 {
            if *line != CSV_HEADER {
                return Err(MatrixError::Exists(format!(
                    "{}: the first line is not the header this version writes; pick another \
                     --out (resuming needs the same columns)",
                    path.display()
                )));
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let row = Row::parse(line).map_err(|e| {
            MatrixError::Exists(format!(
                "{} line {}: {e}; fix or remove that line, then --resume again",
                path.display(),
                i + 1
            ))
        })?;
        rows.push(row);
    }
    Ok(rows)
}

/// For each run key, the last row (a failed run that `--resume` did again appears twice in
/// `results.csv`; the report counts the newer attempt).
fn latest_rows(rows: Vec<Row>) -> (Vec<Row>, usize) {
    let mut at: BTreeMap<RunKey, usize> = BTreeMap::new();
    let mut out: Vec<Option<Row>> = Vec::new();
    let mut replaced = 0;
    for r in rows {
        if let Some(&i) = at.get(&r.spec.key()) {
            out[i] = None;
            replaced += 1;
        }
        at.insert(r.spec.key(), out.len());
        out.push(Some(r));
    }
    (out.into_iter().flatten().collect(), replaced)
}

/// Time left: each remaining run is estimated from finished runs of the same workload, size
/// and scenario — the same party count if there is one; else a power law in the party count
/// fitted to the cell's party counts that ran (CPU-bound runs grow faster than linearly: the
/// CNN's 10-party runs take ≈ 4× its 5-party ones here), or linear scaling when only one
/// count ran — else from the mean of all finished runs. Run times differ by 100× across the
/// matrix, so one overall mean would be far off.
fn estimate_left(finished: &[Row], left: &[RunSpec]) -> Option<Duration> {
    type Cell = (&'static str, &'static str, &'static str);
    let mut same: BTreeMap<(Cell, usize), (f64, u32)> = BTreeMap::new();
    let (mut all, mut n_all) = (0.0, 0u32);
    for r in finished {
        let Some(w) = r.outcome.wall else { continue };
        let s = &r.spec;
        let c = (
            s.workload.program.name(),
            s.workload.size.name(),
            s.scenario.name,
        );
        let w = w.as_secs_f64();
        let e = same.entry((c, s.parties)).or_default();
        *e = (e.0 + w, e.1 + 1);
        all += w;
        n_all += 1;
    }
    if n_all == 0 {
        return None;
    }
    // Per cell: (ln parties, ln mean wall) of each party count that ran.
    let mut points: BTreeMap<Cell, Vec<(f64, f64)>> = BTreeMap::new();
    for ((c, parties), (w, n)) in &same {
        let mean = (w / f64::from(*n)).max(1e-3);
        points
            .entry(*c)
            .or_default()
            .push(((*parties as f64).ln(), mean.ln()));
    }
    let mut total = 0.0;
    for s in left {
        let c = (
            s.workload.program.name(),
            s.workload.size.name(),
            s.scenario.name,
        );
        total += if let Some((w, n)) = same.get(&(c, s.parties)) {
            w / f64::from(*n)
        } else if let Some(p) = points.get(&c) {
            power_law(p, s.parties as f64)
        } else {
            all / f64::from(n_all)
        };
    }
    Some(Duration::from_secs_f64(total))
}

/// Wall time at `parties` from `(ln parties, ln wall)` points: a least-squares line through
/// them (exponent kept within 1–3), or proportional to the party count from a single point.
fn power_law(points: &[(f64, f64)], parties: f64) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let slope = if sxx > 1e-9 {
        (sxy / sxx).clamp(1.0, 3.0)
    } else {
        1.0
    };
    (my + slope * (parties.ln() - mx)).exp()
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
        let p = PathBuf::from(p);
        // `.venv/bin/python` means relative to where the user ran us; the parties run in
        // another directory (examples/), where it would name nothing.
        if p.is_relative() && p.components().count() > 1 {
            if let Ok(cwd) = std::env::current_dir() {
                return cwd.join(p);
            }
        }
        return p;
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

pub(crate) fn run(plan: &Plan, out: &Path, resume: bool) -> Result<(), MatrixError> {
    let python = python();
    check_tools(&python, plan)?;
    std::fs::create_dir_all(out)?;
    let csv_path = out.join("results.csv");
    // A --full run takes a day: never truncate what an earlier run measured.
    let earlier = match std::fs::metadata(&csv_path) {
        Ok(m) if m.len() > 0 => {
            if !resume {
                return Err(MatrixError::Exists(format!(
                    "{} already holds results: add --resume to continue that run (runs \
                     already there with status ok are skipped, failed ones are done again), \
                     or pick another --out",
                    csv_path.display()
                )));
            }
            read_rows(&csv_path)?
        }
        _ => Vec::new(),
    };
    let done: std::collections::BTreeSet<RunKey> = earlier
        .iter()
        .filter(|r| r.outcome.error.is_none())
        .map(|r| r.spec.key())
        .collect();
    let todo: Vec<&RunSpec> = plan
        .runs
        .iter()
        .filter(|r| !done.contains(&r.key()))
        .collect();
    watch_signals()?;
    let mut csv = if earlier.is_empty() {
        let mut f = std::fs::File::create(&csv_path)?;
        writeln!(f, "{CSV_HEADER}")?;
        f
    } else {
        // Rewrite what was read (an unfinished last line is dropped), then append.
        let mut text = String::new();
        let _ = writeln!(text, "{CSV_HEADER}");
        for r in &earlier {
            let _ = writeln!(text, "{}", r.csv());
        }
        let tmp = out.join("results.csv.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &csv_path)?;
        std::fs::OpenOptions::new().append(true).open(&csv_path)?
    };
    let total = todo.len();
    if resume && !earlier.is_empty() {
        println!(
            "mpc-did-e3 matrix --{}: resuming {}: {} rows there ({} ok); {} of this plan's {} runs \
             are done, {total} left",
            plan.kind,
            csv_path.display(),
            earlier.len(),
            earlier.iter().filter(|r| r.outcome.error.is_none()).count(),
            plan.runs.len() - total,
            plan.runs.len(),
        );
    } else {
        println!(
            "mpc-did-e3 matrix --{}: {total} runs → {}",
            plan.kind,
            out.display()
        );
    }
    let started = Instant::now();
    let mut rows = earlier;
    // The topologies of the current (parties, scenario), one per NAT kind ("none", "eim",
    // "symmetric"), built when a mode first needs them.
    let mut group: Option<(usize, &'static str)> = None;
    let mut nets: BTreeMap<&'static str, Net> = BTreeMap::new();
    for (k, spec) in todo.iter().enumerate() {
        let spec: &RunSpec = spec;
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
        rows.push(row.clone());
        let left: Vec<RunSpec> = todo[done..].iter().map(|r| (*r).clone()).collect();
        let eta = estimate_left(&rows, &left).unwrap_or_default();
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
    }
    finish_nets(&mut nets);
    let (rows, redone) = latest_rows(rows);
    if redone > 0 {
        println!("{redone} earlier failed attempts were done again; results.csv keeps both, the report the newer");
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(mode: Mode, rep: u32, error: Option<&str>, wall: f64) -> Row {
        Row {
            spec: RunSpec {
                workload: Workload::new(Program::SecretSanta, Size::Medium),
                parties: 5,
                scenario: SCENARIOS[3],
                mode,
                rep,
            },
            outcome: Outcome {
                wall: Some(Duration::from_secs_f64(wall)),
                mpyc: Some(Duration::from_secs_f64(wall / 2.0)),
                wire_bytes: Some(123_456),
                mpyc_bytes: Some(100_000),
                setup: None,
                paths: vec!["0-1:quic".into(), "0-2:relay".into()],
                error: error.map(str::to_owned),
            },
        }
    }

    /// spec/e3.md §4.4: `--resume` reads back exactly what the matrix wrote, errors with
    /// commas and quotes included.
    #[test]
    fn rows_read_back_as_written() {
        for r in [
            row(Mode::SessionPunched, 2, None, 12.5),
            row(Mode::Ssl, 0, Some("timeout, \"after\" 1800 s"), 1800.0),
        ] {
            let back = Row::parse(&r.csv()).unwrap();
            assert_eq!(back.csv(), r.csv());
            assert_eq!(back.spec.key(), r.spec.key());
            assert_eq!(back.outcome.error, r.outcome.error);
        }
    }

    #[test]
    fn unreadable_rows_are_typed_errors_naming_the_field() {
        let good = row(Mode::Plain, 0, None, 1.0).csv();
        for (bad, says) in [
            (
                good.replacen("secretsanta", "bingo", 1),
                "unknown workload `bingo`",
            ),
            (
                good.replacen(",plain,", ",carrier-pigeon,", 1),
                "unknown mode",
            ),
            (good.replacen(",ok,", ",maybe,", 1), "status `maybe`"),
            (good.replacen(",5,", ",five,", 1), "parties `five`"),
            (format!("{good},extra"), "17 fields"),
            ("\"unterminated".to_owned(), "does not end"),
            (String::new(), "1 fields"),
        ] {
            let e = Row::parse(&bad).err().unwrap();
            assert!(e.contains(says), "{bad:?} → {e}");
        }
    }

    /// A crash while a row is written leaves a last line without its newline: it is dropped
    /// (that run is done again), the complete rows are kept.
    #[test]
    fn an_unfinished_last_line_is_dropped_and_complete_rows_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("results.csv");
        let a = row(Mode::Plain, 0, None, 1.0).csv();
        let b = row(Mode::Ssl, 0, None, 1.1).csv();
        std::fs::write(&p, format!("{CSV_HEADER}\n{a}\n{}", &b[..b.len() / 2])).unwrap();
        let rows = read_rows(&p).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].csv(), a);
        // A broken line in the middle is not guessed at: the error names the line.
        std::fs::write(&p, format!("{CSV_HEADER}\nnot,a,row\n{a}\n")).unwrap();
        let e = read_rows(&p).err().unwrap().to_string();
        assert!(e.contains("line 2"), "{e}");
        std::fs::write(&p, format!("other,header\n{a}\n")).unwrap();
        assert!(read_rows(&p).is_err());
    }

    #[test]
    fn the_report_counts_the_newer_attempt_of_a_run() {
        let rows = vec![
            row(Mode::Plain, 0, Some("timeout"), 9.0),
            row(Mode::Ssl, 0, None, 1.0),
            row(Mode::Plain, 0, None, 2.0),
        ];
        let (latest, redone) = latest_rows(rows);
        assert_eq!(redone, 1);
        assert_eq!(latest.len(), 2);
        assert!(latest.iter().all(|r| r.outcome.error.is_none()));
    }

    /// The estimate uses runs of the same cell, scaled by parties when that count has not
    /// run yet — not one overall mean over runs that differ by 100×.
    #[test]
    fn time_left_is_estimated_per_cell() {
        let finished = vec![row(Mode::Plain, 0, None, 10.0)];
        let mut same = finished[0].spec.clone();
        same.mode = Mode::Ssl;
        let mut bigger = same.clone();
        bigger.parties = 10;
        let left = estimate_left(&finished, &[same, bigger]).unwrap();
        assert!((left.as_secs_f64() - 30.0).abs() < 1e-6, "{left:?}");
        assert!(estimate_left(&[], &[]).is_none());
    }

    /// With two party counts done, a count not yet run follows their power law: 1 s at 2
    /// parties and 4 s at 4 make 16 s at 8 (linear scaling from the mean would say 8–10 s).
    #[test]
    fn time_left_follows_the_party_counts_that_ran() {
        let mut two = row(Mode::Plain, 0, None, 1.0);
        two.spec.parties = 2;
        let mut four = row(Mode::Plain, 0, None, 4.0);
        four.spec.parties = 4;
        let mut eight = two.spec.clone();
        eight.parties = 8;
        let left = estimate_left(&[two, four], &[eight]).unwrap();
        assert!((left.as_secs_f64() - 16.0).abs() < 1e-6, "{left:?}");
    }
}
