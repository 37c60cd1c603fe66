//! `report.md` (tables: medians per combination, ratios against plain MPyC TCP at the same
//! RTT) and the PNG plots, drawn by matplotlib from `results.csv`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use crate::matrix::{rtt_max, MatrixError, Plan, Row, FULL_PARTIES};
use crate::modes::Mode;

/// The plots the report shows; `plots.py` writes exactly these.
pub(crate) const PLOTS: [(&str, &str); 3] = [
    (
        "time_vs_parties.png",
        "MPyC time vs parties, per scenario and workload, one line per mode",
    ),
    (
        "bytes_per_mode.png",
        "Bytes on the wire per mode (median over repetitions), per workload",
    ),
    (
        "setup_per_mode.png",
        "Set-up time per mode (WireGuard mesh, session handshakes)",
    ),
];

/// (workload, size, parties, scenario) → mode → its runs.
type Groups<'a> = BTreeMap<(String, String, usize, String), BTreeMap<&'static str, Vec<&'a Row>>>;

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

pub(crate) fn write(
    plan: &Plan,
    rows: &[Row],
    out: &Path,
    python: &Path,
) -> Result<(), MatrixError> {
    let mut md = String::new();
    let failed = rows.iter().filter(|r| r.outcome.error.is_some()).count();
    let _ = writeln!(md, "# e3 evaluation matrix (--{})\n", plan.kind);
    let _ = writeln!(
        md,
        "{} runs, {} failed. One row per run in `results.csv`. Wall = launch to the last \
         party's exit; MPyC = the slowest party's own elapsed time (connected → shutdown); \
         wire = bytes all hosts' interfaces sent (headers included); set-up = the mesh or \
         the sessions before MPyC starts. Ratios are against plain MPyC TCP in the same \
         scenario (same RTTs). Medians over repetitions.\n",
        rows.len(),
        failed
    );
    if plan.kind == "quick" {
        let reps = rows.iter().map(|r| r.spec.rep + 1).max().unwrap_or(0);
        let _ = writeln!(
            md,
            "**Quick run**: low sizes, {reps} repetition(s) with the modes alternating, on \
             whatever machine ran it — figures from a shared or busy machine are contended; use \
             `--full` for the evaluation.\n"
        );
    }
    if plan.kind == "full" {
        coverage(&mut md, rows);
    }
    let mut groups: Groups = BTreeMap::new();
    for r in rows {
        let s = &r.spec;
        groups
            .entry((
                s.workload.program.name().to_owned(),
                s.workload.size.name().to_owned(),
                s.parties,
                s.scenario.name.to_owned(),
            ))
            .or_default()
            .entry(s.mode.name())
            .or_default()
            .push(r);
    }
    at_a_glance(&mut md, &groups);
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "| workload | size | parties | scenario | max RTT | mode | ok/runs | wall | MPyC | × plain (MPyC) | wire bytes | × plain (bytes) | set-up | paths |"
    );
    let _ = writeln!(
        md,
        "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for ((w, size, n, scen), modes) in &groups {
        let stat = |rows: &[&Row], f: &dyn Fn(&Row) -> Option<f64>| {
            median(
                rows.iter()
                    .filter(|r| r.outcome.error.is_none())
                    .filter_map(|r| f(r))
                    .collect(),
            )
        };
        let plain_mpyc = modes
            .get(Mode::Plain.name())
            .and_then(|r| stat(r, &|r| r.outcome.mpyc.map(|d| d.as_secs_f64())));
        let plain_bytes = modes
            .get(Mode::Plain.name())
            .and_then(|r| stat(r, &|r| r.outcome.wire_bytes.map(|b| b as f64)));
        for mode in Mode::ALL {
            let Some(rs) = modes.get(mode.name()) else {
                continue;
            };
            let ok = rs.iter().filter(|r| r.outcome.error.is_none()).count();
            let wall = stat(rs, &|r| r.outcome.wall.map(|d| d.as_secs_f64()));
            let mpyc = stat(rs, &|r| r.outcome.mpyc.map(|d| d.as_secs_f64()));
            let bytes = stat(rs, &|r| r.outcome.wire_bytes.map(|b| b as f64));
            let setup = stat(rs, &|r| r.outcome.setup.map(|d| d.as_secs_f64()));
            let f = |v: Option<f64>, unit: &str| {
                v.map_or("–".to_owned(), |v| format!("{v:.2} {unit}"))
            };
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                _ => "–".to_owned(),
            };
            let paths = rs
                .iter()
                .find(|r| r.outcome.error.is_none())
                .map(|r| r.outcome.paths.join(" "))
                .unwrap_or_default();
            let spec = &rs[0].spec;
            let _ = writeln!(
                md,
                "| {w} | {size} | {n} | {scen} | {:.0} ms | {} | {ok}/{} | {} | {} | {} | {} | {} | {} | {} |",
                rtt_max(&spec.scenario, spec.parties).as_secs_f64() * 1e3,
                mode.name(),
                rs.len(),
                f(wall, "s"),
                f(mpyc, "s"),
                ratio(mpyc, plain_mpyc),
                bytes.map_or("–".to_owned(), |b| format!("{:.0}", b)),
                ratio(bytes, plain_bytes),
                f(setup, "s"),
                paths,
            );
        }
    }
    md.push_str(ON_PAPER);
    if failed > 0 {
        let _ = writeln!(md, "\n## Failed runs\n");
        for r in rows.iter().filter(|r| r.outcome.error.is_some()) {
            let s = &r.spec;
            let _ = writeln!(
                md,
                "- {} n={} {} {} rep {}: {}",
                s.workload,
                s.parties,
                s.scenario.name,
                s.mode.name(),
                s.rep,
                r.outcome.error.as_deref().unwrap_or("")
            );
        }
    }
    let _ = writeln!(md, "\n## Plots\n");
    let plot = Command::new(python)
        .arg("-c")
        .arg(PLOTS_PY)
        .arg(out.join("results.csv"))
        .arg(out)
        .output()?;
    if plot.status.success() {
        for (file, title) in PLOTS {
            let _ = writeln!(md, "### {title}\n\n![{title}]({file})\n");
        }
    } else {
        let _ = writeln!(
            md,
            "Plotting failed: {}",
            String::from_utf8_lossy(&plot.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let _ = writeln!(
        md,
        "## Scenarios\n\nOne-way access delay per host (hosts spread round-robin over the \
         regions; RTT between hosts = 2·(a + b); spec/e3.md §4):\n"
    );
    for s in crate::matrix::SCENARIOS {
        let regions: Vec<String> = s
            .regions
            .iter()
            .map(|(r, us)| format!("{r} {:.2} ms", *us as f64 / 1e3))
            .collect();
        let _ = writeln!(md, "- **{}**: {}", s.name, regions.join(", "));
    }
    std::fs::write(out.join("report.md"), md)?;
    if !plot.status.success() {
        return Err(MatrixError::Unavailable(format!(
            "matplotlib could not draw the plots: {}",
            String::from_utf8_lossy(&plot.stderr).trim()
        )));
    }
    Ok(())
}

/// How much of the `--full` plan the rows cover: a run done in pieces (`--resume`) says
/// what is still missing instead of looking complete.
/// The median MPyC time of the successful runs among `rows`, in seconds.
fn mpyc_median(rows: &[&Row]) -> Option<f64> {
    median(
        rows.iter()
            .filter(|r| r.outcome.error.is_none())
            .filter_map(|r| r.outcome.mpyc.map(|d| d.as_secs_f64()))
            .collect(),
    )
}

/// One row per workload, size, scenario and party count; per mode its median MPyC time
/// ÷ plain MPyC's: the results table's ratios side by side.
fn at_a_glance(md: &mut String, groups: &Groups) {
    let others: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(|m| *m != Mode::Plain)
        .collect();
    let _ = writeln!(
        md,
        "## At a glance: MPyC time ÷ plain MPyC TCP\n\nMedian over repetitions, same scenario \
         (same RTTs); `–`: no successful run. The rows are the results table's, pivoted.\n"
    );
    let mut head = "| workload | size | scenario | parties | plain MPyC |".to_owned();
    let mut rule = "|---|---|---|---:|---:|".to_owned();
    for m in &others {
        let _ = write!(head, " {} |", m.name());
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{head}\n{rule}");
    // Sorted by workload, size, scenario (in the plan's order), parties.
    let order = |s: &str| {
        crate::matrix::SCENARIOS
            .iter()
            .position(|sc| sc.name == s)
            .unwrap_or(usize::MAX)
    };
    let mut keys: Vec<_> = groups.keys().collect();
    keys.sort_by(|a, b| {
        (&a.0, size_rank(&a.1), order(&a.3), a.2).cmp(&(&b.0, size_rank(&b.1), order(&b.3), b.2))
    });
    for key in keys {
        let (w, size, n, scen) = key;
        let modes = &groups[key];
        let plain = modes.get(Mode::Plain.name()).and_then(|r| mpyc_median(r));
        let mut line = format!(
            "| {w} | {size} | {scen} | {n} | {} |",
            plain.map_or("–".to_owned(), |p| format!("{p:.2} s"))
        );
        for m in &others {
            let cell = match (modes.get(m.name()).and_then(|r| mpyc_median(r)), plain) {
                (Some(v), Some(p)) if p > 0.0 => format!("{:.2}×", v / p),
                _ => "–".to_owned(),
            };
            let _ = write!(line, " {cell} |");
        }
        let _ = writeln!(md, "{line}");
    }
    let _ = writeln!(md);
}

/// low < medium < high.
fn size_rank(s: &str) -> usize {
    ["low", "medium", "high"]
        .iter()
        .position(|n| *n == s)
        .unwrap_or(usize::MAX)
}

fn coverage(md: &mut String, rows: &[Row]) {
    use mpc_did_e3::workload::{Program, Size};
    let mut ok: BTreeMap<(&str, &str, usize, &str, &str), u32> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.outcome.error.is_none()) {
        let s = &r.spec;
        *ok.entry((
            s.workload.program.name(),
            s.workload.size.name(),
            s.parties,
            s.scenario.name,
            s.mode.name(),
        ))
        .or_default() += 1;
    }
    let cells = Program::ALL.len()
        * Size::ALL.len()
        * FULL_PARTIES.len()
        * crate::matrix::SCENARIOS.len()
        * Mode::ALL.len();
    let covered = ok
        .keys()
        .filter(|(_, _, n, _, _)| FULL_PARTIES.contains(n))
        .count();
    let reps: Vec<u32> = ok.values().copied().collect();
    let _ = writeln!(
        md,
        "## Coverage of the full plan

{covered} of its {cells} cells (workload × size × parties × scenario × mode) have at least one successful run{}. Cells below: modes with a successful run, of {}.
",
        match (reps.iter().min(), reps.iter().max()) {
            (Some(a), Some(b)) => format!("; successful repetitions per covered cell {a}–{b}"),
            _ => String::new(),
        },
        Mode::ALL.len()
    );
    let mut head = "| scenario | parties |".to_owned();
    let mut rule = "|---|---:|".to_owned();
    for p in Program::ALL {
        for z in Size::ALL {
            let _ = write!(head, " {} {} |", p.name(), z.name());
            rule.push_str("---:|");
        }
    }
    let _ = writeln!(md, "{head}\n{rule}");
    for s in crate::matrix::SCENARIOS {
        for n in FULL_PARTIES {
            let mut line = format!("| {} | {n} |", s.name);
            for p in Program::ALL {
                for z in Size::ALL {
                    let done = Mode::ALL
                        .iter()
                        .filter(|m| ok.contains_key(&(p.name(), z.name(), n, s.name, m.name())))
                        .count();
                    let _ = write!(line, " {done} |");
                }
            }
            let _ = writeln!(md, "{line}");
        }
    }
    md.push('\n');
}

/// Tailscale/Headscale cannot be installed here (no account, no coordination server on
/// this machine): one row from its published behaviour, marked as not measured, so the
/// comparison of the thesis's plan is complete and nobody mistakes it for a figure.
const ON_PAPER: &str = "
## Not measured: Tailscale / Headscale (on paper)

**Not a measurement**: from Tailscale's published documentation; no run of this matrix
produced it.

| solution | direct path (EIM NATs) | behind symmetric NATs | per-packet crypto | set-up | expected place in the table above |
|---|---|---|---|---|---|
| Tailscale / Headscale (on paper, not measured) | WireGuard over UDP after NAT traversal (STUN, disco pings) [1][2] | relayed by a DERP server: the WireGuard packets over TCP (HTTP(S)) [1][2][3] | WireGuard (userspace wireguard-go on Linux [4]) | a coordination server distributes keys and endpoints, control plane only [5]; Headscale is a self-hosted one [6] | direct: like `wireguard` (same data plane) plus NAT traversal set-up, comparable with `session-punched`; relayed: a TCP relay like `session-relay` |

[1] https://tailscale.com/kb/1232/derp-servers — [2] https://tailscale.com/blog/how-nat-traversal-works —
[3] https://github.com/tailscale/tailscale/blob/main/derp/README.md — [4] https://tailscale.com/blog/throughput-improvements —
[5] https://tailscale.com/glossary/2020-04-02-coordination-server/ — [6] https://headscale.net/latest/ref/derp/
";

/// Reads results.csv (argv[1]), writes the PNGs into argv[2].
const PLOTS_PY: &str = r#"
import csv, sys, statistics, collections
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["status"] == "ok"]
out = sys.argv[2]
modes = sorted({r["mode"] for r in rows})
scen = sorted({r["scenario"] for r in rows})
work = sorted({(r["workload"], r["size"]) for r in rows})
def med(v):
    return statistics.median(v) if v else float("nan")
fig, axes = plt.subplots(len(work) or 1, len(scen) or 1, figsize=(4.5 * max(1, len(scen)), 3.4 * max(1, len(work))), squeeze=False)
for wi, (w, s) in enumerate(work):
    for si, sc in enumerate(scen):
        ax = axes[wi][si]
        for m in modes:
            pts = collections.defaultdict(list)
            for r in rows:
                if (r["workload"], r["size"], r["scenario"], r["mode"]) == (w, s, sc, m) and r["mpyc_s"]:
                    pts[int(r["parties"])].append(float(r["mpyc_s"]))
            xs = sorted(pts)
            if xs:
                ax.plot(xs, [med(pts[x]) for x in xs], marker="o", label=m)
        ax.set_title(f"{w} {s} — {sc}", fontsize=9)
        ax.set_xlabel("parties"); ax.set_ylabel("MPyC time (s)")
        ax.grid(alpha=0.3)
axes[0][0].legend(fontsize=8)
fig.tight_layout(); fig.savefig(f"{out}/time_vs_parties.png", dpi=110); plt.close(fig)
for name, col, label in [("bytes_per_mode.png", "wire_bytes", "bytes on the wire"), ("setup_per_mode.png", "setup_s", "set-up time (s)")]:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(1, len(work))
    for wi, (w, s) in enumerate(work):
        vals = [med([float(r[col]) for r in rows if (r["workload"], r["size"], r["mode"]) == (w, s, m) and r[col]]) for m in modes]
        vals = [0 if v != v else v for v in vals]
        ax.bar([i + wi * width for i in range(len(modes))], vals, width, label=f"{w} {s}")
    ax.set_xticks([i + width * (len(work) - 1) / 2 for i in range(len(modes))]); ax.set_xticklabels(modes, fontsize=8)
    ax.set_ylabel(label); ax.legend(fontsize=8); ax.grid(axis="y", alpha=0.3)
    fig.tight_layout(); fig.savefig(f"{out}/{name}", dpi=110); plt.close(fig)
"#;
