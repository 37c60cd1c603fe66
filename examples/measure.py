"""Measure a workload's shape: run its parties over plain loopback TCP and count messages.

Runs M parties of an example program on 127.0.0.1 (MPyC's own networking) and reports per
run the wall time (launch to the last party's exit), MPyC's own elapsed time (slowest
party), the payload bytes every party sent (MPyC's `bytes sent`, summed and per party) and
the number of MPyC messages party 0 sent to party 1, an upper bound on the communication
rounds between that pair (MPyC sends one message per operation; independent operations of
one round travel as separate messages). The count comes from a thin wrapper that
counts calls of `mpyc.asyncoro.MessageExchanger.send` per peer inside the party process;
nothing of the program is changed.

  python measure.py -M3 secretsanta.py --people 3 4 5 --draws 16
  python measure.py -M3 --json cnn_digits.py --batch 8

The figures in examples/README.md come from this script (with the machine's load noted).
"""

import json
import os
import pathlib
import re
import runpy
import socket
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).parent
TIMEOUT = 900


def party_main():
    """Inside a party process: count messages per peer, then run the program."""
    import atexit

    from mpyc import asyncoro

    counts = {}
    original = asyncoro.MessageExchanger.send

    def send(self, pc, payload):
        counts[self.peer_pid] = counts.get(self.peer_pid, 0) + 1
        return original(self, pc, payload)

    asyncoro.MessageExchanger.send = send
    atexit.register(lambda: print(f"messages-sent: {json.dumps(counts)}", flush=True))
    script = sys.argv[2]
    sys.argv = [script] + sys.argv[3:]
    runpy.run_path(script, run_name="__main__")


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def stop_line(log):
    m = re.search(r"elapsed time: (\d+):(\d+):([\d.]+)\|bytes sent: (\d+)", log)
    if not m:
        return None, None
    h, mi, s, b = m.groups()
    return int(h) * 3600 + int(mi) * 60 + float(s), int(b)


def main():
    argv = sys.argv[1:]
    parties, as_json = 3, False
    while argv and argv[0].startswith("-"):
        opt = argv.pop(0)
        if opt.startswith("-M"):
            parties = int(opt[2:])
        elif opt == "--json":
            as_json = True
        else:
            sys.exit(f"unknown option {opt}: use -M<parties> [--json] PROGRAM [ARGS...]")
    if not argv:
        sys.exit("usage: measure.py -M<parties> [--json] PROGRAM [ARGS...]")
    script = str(HERE / argv[0]) if not os.path.exists(argv[0]) else argv[0]
    ports = free_ports(parties)
    start = time.monotonic()
    procs = []
    for i in range(parties):
        cmd = [sys.executable, __file__, "--party", script, *argv[1:], f"-M{parties}", f"-I{i}"]
        cmd += [a for p in ports for a in ("-P", f"127.0.0.1:{p}")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        sys.exit(f"a party did not finish within {TIMEOUT} s")
    wall = time.monotonic() - start
    for i, (p, log) in enumerate(zip(procs, logs)):
        if p.returncode != 0:
            sys.exit(f"party {i} failed ({p.returncode}):\n{log}")
    stops = [stop_line(log) for log in logs]
    counts = [json.loads(re.search(r"messages-sent: (.*)", log).group(1)) for log in logs]
    result = {
        "program": argv[0],
        "args": argv[1:],
        "parties": parties,
        "wall_s": round(wall, 3),
        "mpyc_s": round(max(s[0] for s in stops), 3),
        "bytes_per_party": [s[1] for s in stops],
        "bytes_total": sum(s[1] for s in stops),
        "messages_0_to_1": counts[0].get("1", 0) if parties > 1 else 0,
        "valid": all("valid: True" in log for log in logs),
    }
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--party":
        party_main()
    else:
        main()
