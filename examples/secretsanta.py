"""Secret Santa by secure multiparty computation: a uniformly random derangement.

Every person gives a present to one other person, nobody to themselves. The assignment is
a random permutation without fixed points, drawn inside the MPC so that no party chooses
it: the parties jointly shuffle secret values, test in secret whether the permutation has
a fixed point, and reveal only that single bit; on a fixed point they draw again.

This workload is many sequential rounds of tiny messages (a secure shuffle and an equality
test per element per attempt), the shape that makes per-message public-key crypto too
slow and that mpc-did's session mode is built for.

Run alone:        python secretsanta.py
Run as 3 parties: python secretsanta.py -M3 -I0 & python secretsanta.py -M3 -I1 & ...
Options after MPyC's own (-M, -I, -P, ...):
  --people N [N ...]  group sizes to draw a derangement for (default: 3 4 5 6 7 8)
  --seed S            (only for tests) nothing here is seeded: every run draws anew

Output: one line per group, `people=N derangement=[...]`, then `valid: True/False` and
`result-digest: <sha256>`; all parties print the same digest when the run is correct.
"""

import argparse
import hashlib

from mpyc.runtime import mpc
import mpyc.random


async def derangement(secint, n):
    """Draw a secret permutation of range(n) until it has no fixed point; return it secret."""
    attempts = 0
    while True:
        attempts += 1
        perm = mpyc.random.random_permutation(secint, n)
        # perm[i] == i is a secure equality test; only the count of fixed points of a
        # permutation we then discard (or zero for the one we keep) is revealed.
        fixed_points = mpc.sum([perm[i] == i for i in range(n)])
        if await mpc.output(fixed_points) == 0:
            return perm, attempts


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--people", type=int, nargs="+", default=[3, 4, 5, 6, 7, 8])
    args = parser.parse_args()
    if any(n < 2 for n in args.people):
        parser.error("--people: a group needs at least 2 people")

    secint = mpc.SecInt(16)
    await mpc.start()
    results = []
    for n in args.people:
        perm, attempts = await derangement(secint, n)
        assignment = [int(a) for a in await mpc.output(perm)]
        results.append(assignment)
        print(f"people={n} derangement={assignment} attempts={attempts}", flush=True)
    await mpc.shutdown()

    valid = all(
        sorted(a) == list(range(len(a))) and all(a[i] != i for i in range(len(a)))
        for a in results
    )
    print(f"valid: {valid}")
    print("result-digest:", hashlib.sha256(repr(results).encode()).hexdigest())
    if not valid:
        raise SystemExit(1)


if __name__ == "__main__":
    mpc.run(main())
