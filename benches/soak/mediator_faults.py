#!/usr/bin/env python3
"""Soak: repeated 3-party MPCs against one mediator with random faults (issue 13 "Soak").

Not run in CI. Runs real binaries: `mpc-did-mediator` on a fixed loopback port with one data
directory, three wallets registered there, and for each attempt a fresh MPC session (mpc new,
invite, two joins, host) and three concurrent `mpc-did run` processes of a Secret Santa
program (3..30 people: about 15 s per run in a debug build), with one random fault from:
none; mediator kill -9 then restart after 3 s; mediator SIGTERM then restart after 3 s
(both injected 1–5 s into the run); a party's Ctrl-C (SIGINT) 0.2–1 s into the run (before
MPyC starts) or 4–8 s in (during the computation); a party running a different program
file (its hash does not match the lobby's). After every attempt that failed, the same MPC
session is run again by all three parties with no fault: that re-run must succeed with no
manual step (issue 13: "after every failed attempt a plain re-run succeeds").

Prints per attempt and at the end: attempts, successes, re-runs and their successes, named failures (the first
`error:` line of each failing party), hangs (a run past --bound; must be 0), and the
mediator's RSS and open file descriptors at start and end (of the process running then:
a restart starts a new process, so the end figures cover the time since the last restart;
the peak over the whole soak is printed too).

Usage (from the repository root, after `cargo build --release -p mpc-did -p mpc-did-mediator`):
  MPC_DID_PYTHON=.venv/bin/python benches/soak/mediator_faults.py --minutes 60
  benches/soak/mediator_faults.py --minutes 2 --bin target/debug      # a smoke run
"""
import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Mediator:
    def __init__(self, binary, data, port):
        self.binary, self.data, self.port = binary, data, port
        self.proc = None
        self.peak_rss = 0
        self.peak_fds = 0

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "--listen", f"127.0.0.1:{self.port}", "--log", "warn", "--data", self.data],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        self.info = json.loads(line)
        return self.info

    def stats(self):
        """(RSS in KiB, open fds) of the running process."""
        pid = self.proc.pid
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for l in f:
                if l.startswith("VmRSS:"):
                    rss = int(l.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        self.peak_rss, self.peak_fds = max(self.peak_rss, rss), max(self.peak_fds, fds)
        return rss, fds

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def term(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "did not exit within 30 s of SIGTERM"


FAULTS = ["none", "kill9", "sigterm", "ctrl-c-early", "ctrl-c-late", "wrong-program"]


def mpc_did(cli, home, *args, timeout=120):
    r = subprocess.run([cli, "--home", home, *args], capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {r.stderr.strip()}")
    return r.stdout


def first_error(stderr):
    # Our own verdict first (the program's stderr may hold errors of its own, e.g. Python
    # interrupted while it starts).
    for l in stderr.splitlines():
        if l.startswith("mpc-did: error:"):
            return l.split("error:", 1)[1].strip()[:160]
    for l in stderr.splitlines():
        if "error:" in l:
            return l.split("error:", 1)[1].strip()[:160]
    return (stderr.strip().splitlines() or ["no output"])[-1][:160]


def lobby(cli, homes, program, people):
    sid = mpc_did(cli, homes[0], "mpc", "new", "--parties", "3", "--program", program,
                  "--", "--people", *people).strip()
    url = json.loads(mpc_did(cli, homes[0], "--json", "invite", "--mpc", sid, "--no-qr"))["url"]
    joins = [subprocess.Popen([cli, "--home", h, "--json", "join", url, "--program", program,
                               "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True) for h in homes[1:]]
    mpc_did(cli, homes[0], "--json", "mpc", "host", "--mpc", sid, "--timeout", "60")
    for j in joins:
        out, err = j.communicate(timeout=90)
        if j.returncode != 0:
            raise RuntimeError(f"join failed: {err.strip()}")
    return sid


class Run:
    """One `mpc-did run` process; its stderr is read as it comes (to time late faults)."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)
        self.err_lines, self.out_lines = [], []
        self.readers = [threading.Thread(target=self._read, args=(f, lines), daemon=True)
                        for f, lines in [(self.proc.stderr, self.err_lines),
                                         (self.proc.stdout, self.out_lines)]]
        for t in self.readers:
            t.start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append(line)

    def saw(self, text):
        return any(text in l for l in list(self.err_lines))


def start_runs(cli, homes, sid, python, programs, relay_only):
    extra = ["--relay-only"] if relay_only else []
    return [Run([cli, "--home", h, "run", "--mpc", sid, "--listen", "127.0.0.1:0",
                 "--connect-timeout", "60", "--resume-timeout", "30", *extra,
                 "--", python, prog])
            for h, prog in zip(homes, programs)]


def collect(runs, t0, bound):
    """Wait for every run; returns (results, hung)."""
    results, hung = [], False
    for r in runs:
        left = max(1, bound - (time.monotonic() - t0))
        this_hung = False
        try:
            r.proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            hung = this_hung = True
            r.proc.kill()
            r.proc.wait()
        for t in r.readers:
            t.join(timeout=5)
        results.append((None if this_hung else r.proc.returncode, "".join(r.out_lines),
                        "".join(r.err_lines)))
    return results, hung


def judge(results, hung, failures):
    """'HANG', 'ok', or 'failed: …' (named failures counted). A failed attempt must fail at
    every party with a named error: a party that exits 0 while another fails is a disagreement."""
    digests = {next((l for l in out.splitlines() if l.startswith("result-digest: ")), None)
               for _, out, _ in results}
    if hung:
        return "HANG"
    if all(rc == 0 for rc, _, _ in results) and len(digests) == 1 and None not in digests:
        return "ok"
    names = sorted({first_error(err) for rc, _, err in results if rc != 0} or {"parties disagree"})
    if any(rc == 0 for rc, _, _ in results):
        names.append("a party exited 0 while another failed")
    for n in names:
        failures[n] += 1
    return "failed: " + " | ".join(names)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--bin", default=str(ROOT / "target/release"))
    ap.add_argument("--bound", type=float, default=300, help="seconds before a run counts as a hang")
    ap.add_argument("--people", type=int, default=30, help="Secret Santa for 3..N people")
    ap.add_argument("--relay-only", action="store_true", default=True)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--max-rss-mib", type=float, default=32,
                    help="bound on the mediator's peak RSS (the soak fails above it)")
    ap.add_argument("--max-fds", type=int, default=32,
                    help="bound on the mediator's peak open fds (the soak fails above it)")
    ap.add_argument("--faults", nargs="+", default=FAULTS, choices=FAULTS,
                    help="faults to draw from (uniformly); default: all")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    python = os.environ.get("MPC_DID_PYTHON", str(ROOT / ".venv/bin/python"))
    cli, med_bin = f"{a.bin}/mpc-did", f"{a.bin}/mpc-did-mediator"
    program = str(ROOT / "examples/secretsanta.py")
    people = [str(n) for n in range(3, a.people + 1)]
    work = tempfile.mkdtemp(prefix="mpc-did-soak-")
    med = Mediator(med_bin, f"{work}/mediator", free_port())
    med.start()
    time.sleep(0.5)
    start_stats = med.stats()
    homes = []
    for name in ["p0", "p1", "p2"]:
        h = f"{work}/{name}"
        os.makedirs(h)
        mpc_did(cli, h, "id", "create", "--name", name)
        mpc_did(cli, h, "mediator", "register", med.info["invitation_url"])
        homes.append(h)
    print(f"soak: mediator pid {med.proc.pid}, RSS {start_stats[0]} KiB, {start_stats[1]} fds; "
          f"{a.minutes} min; work dir {work}", flush=True)
    attempts, successes, hangs, reruns, rerun_ok = 0, 0, 0, 0, 0
    failures, rerun_failures = Counter(), Counter()
    wrong = f"{work}/secretsanta_other.py"
    Path(wrong).write_text(Path(program).read_text() + "\n# a different file: its hash differs\n")
    faults = Counter()
    until = time.monotonic() + a.minutes * 60
    while time.monotonic() < until:
        attempts += 1
        fault = rng.choice(a.faults)
        faults[fault] += 1
        try:
            sid = lobby(cli, homes, program, people)
        except Exception as e:  # a failed lobby is a named failure too
            failures[f"lobby: {e}"[:160]] += 1
            print(f"attempt {attempts}: lobby failed: {e}", flush=True)
            continue
        programs = [program] * 3
        if fault == "wrong-program":
            programs[rng.randrange(3)] = wrong
        runs = start_runs(cli, homes, sid, python, programs, a.relay_only)
        t0 = time.monotonic()
        if fault in ("kill9", "sigterm"):
            time.sleep(rng.uniform(1, 5))
            if fault == "kill9":
                med.kill9()
            else:
                st = med.term()
                if st != 0:
                    failures[f"mediator SIGTERM exit: {st}"] += 1
            time.sleep(3)
            med.start()
        elif fault == "ctrl-c-early":
            time.sleep(rng.uniform(0.2, 1))
            victim = runs[rng.randrange(3)]
            if victim.proc.poll() is None:
                victim.proc.send_signal(signal.SIGINT)
        elif fault == "ctrl-c-late":
            # During the computation: once the victim started MPyC.
            victim = runs[rng.randrange(3)]
            deadline = time.monotonic() + 90
            while not victim.saw("; starting ") and victim.proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.2, 1.5))
            if victim.proc.poll() is None:
                victim.proc.send_signal(signal.SIGINT)
        results, hung = collect(runs, t0, a.bound)
        secs = time.monotonic() - t0
        verdict = judge(results, hung, failures)
        hangs += verdict == "HANG"
        successes += verdict == "ok"
        rss, fds = med.stats()
        print(f"attempt {attempts} ({fault}): {verdict} in {secs:.1f} s; mediator RSS {rss} KiB, {fds} fds",
              flush=True)
        if verdict != "ok":
            reruns += 1
            t0 = time.monotonic()
            results, hung = collect(start_runs(cli, homes, sid, python, [program] * 3, a.relay_only),
                                    t0, a.bound)
            rv = judge(results, hung, rerun_failures)
            hangs += rv == "HANG"
            rerun_ok += rv == "ok"
            print(f"attempt {attempts} re-run: {rv} in {time.monotonic() - t0:.1f} s", flush=True)
    end_stats = med.stats()
    med.term()
    print("\n== soak summary ==")
    print(f"attempts {attempts}, successes {successes}, hangs {hangs}, failures {sum(failures.values())}; "
          f"re-runs after a failure {reruns}, of which succeeded {rerun_ok}")
    print(f"faults: {dict(faults)}")
    for name, n in failures.most_common():
        print(f"  {n} × {name}")
    for name, n in rerun_failures.most_common():
        print(f"  re-run: {n} × {name}")
    print(f"mediator at start: RSS {start_stats[0]} KiB, {start_stats[1]} fds; "
          f"at end (since its last restart): RSS {end_stats[0]} KiB, {end_stats[1]} fds; "
          f"peak RSS {med.peak_rss} KiB, peak fds {med.peak_fds}")
    shutil.rmtree(work, ignore_errors=True)
    within = med.peak_rss <= a.max_rss_mib * 1024 and med.peak_fds <= a.max_fds
    print(f"bounds: peak RSS ≤ {a.max_rss_mib} MiB and peak fds ≤ {a.max_fds}: "
          f"{'held' if within else 'EXCEEDED'}")
    return 0 if hangs == 0 and rerun_ok == reruns and within else 1


if __name__ == "__main__":
    sys.exit(main())
