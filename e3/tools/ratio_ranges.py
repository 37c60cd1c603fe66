#!/usr/bin/env python3
"""Ranges of MPyC time ÷ plain over the cells of an e3 `results.csv` (docs/evaluation.md §1.2a).

Usage: python3 e3/tools/ratio_ranges.py docs/eval-full/results.csv [--min-plain SECONDS]

Per run the newest row counts (a --resume re-run replaces a failed one); per cell
(workload, size, parties, scenario) the median MPyC time of each mode is divided by the
median of `plain`. Cells with 2-5 parties only (10 parties are CPU-bound on 2 cores). Prints,
per mode, the range over the cells regions apart (scenario other than one-region), the same
without the cells whose plain median is under --min-plain (default 1 s: start-up noise), and
the range over the one-region cells.
"""
import collections
import csv
import statistics
import sys

MODES = ["ssl", "wireguard", "session-direct", "session-punched", "session-relay",
         "didcomm-direct", "didcomm-mediated"]


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    min_plain = float(argv[argv.index("--min-plain") + 1]) if "--min-plain" in argv else 1.0
    last = {}
    with open(argv[1], newline="") as f:
        for r in csv.DictReader(f):
            key = (r["workload"], r["size"], r["parties"], r["scenario"], r["mode"], r["repetition"])
            last[key] = r
    cells = collections.defaultdict(lambda: collections.defaultdict(list))
    for key, r in last.items():
        if r["status"] == "ok":
            cells[key[:4]][key[4]].append(float(r["mpyc_s"]))
    ranges = {m: {"apart": [], "apart_big": [], "one": []} for m in MODES}
    counts = collections.Counter()
    for cell, modes in cells.items():
        if cell[2] not in ("2", "3", "5") or "plain" not in modes:
            continue
        plain = statistics.median(modes["plain"])
        apart = cell[3] != "one-region"
        counts["apart" if apart else "one"] += 1
        counts["apart_big"] += apart and plain >= min_plain
        for m in MODES:
            if m not in modes:
                continue
            ratio = statistics.median(modes[m]) / plain
            if apart:
                ranges[m]["apart"].append(ratio)
                if plain >= min_plain:
                    ranges[m]["apart_big"].append(ratio)
            else:
                ranges[m]["one"].append(ratio)

    def span(xs):
        return f"{min(xs):.2f}–{max(xs):.2f}×" if xs else "–"

    print(f"cells regions apart: {counts['apart']} ({counts['apart_big']} with plain ≥ {min_plain:g} s); "
          f"one region: {counts['one']}")
    print("| mode | regions apart | (plain ≥ %g s) | one region |" % min_plain)
    for m in MODES:
        r = ranges[m]
        print(f"| {m} | {span(r['apart'])} | ({span(r['apart_big'])}) | {span(r['one'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
