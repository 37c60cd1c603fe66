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
  --draws K           fixed work: exactly K draws per group, whatever they show (below)

Fixed work (`--draws K`, the evaluation workloads): MPyC's randomness cannot be seeded (its
PRSS keys come from `secrets`), so the number of draws until a derangement is random
(geometric, mean about e = 2.72 per group) and so are a run's rounds and bytes. With
`--draws K` every group performs exactly K draws (shuffle + fixed-point test + reveal of
the fixed-point count each) and keeps the first derangement among them; only if none of
the K draws is one (probability about (1 - 1/e)^K, 0.07 % for K = 16) does it draw on, and
prints `extra-draws=N` so a benchmark can see the run did more work than its peers.
What remains random is inside MPyC's shuffle: `random_unit_vector` restarts on a revealed
rejection bit when a range is not a power of two, so the rounds of a run still vary by
about 1-2 % (measured: 1,057 and 1,072 messages party 0 -> 1 for `--people 3 4 --draws 16`).
A sorting-network shuffle with secret random keys makes the work exactly fixed, but on
48-bit integers it costs 12x the rounds and 20x the bytes, which would make this workload
measure bit decompositions rather than the draw-and-test loop of the thesis.

Output: one line per group, `people=N derangement=[...]`, then `valid: True/False` and
`result-digest: <sha256>`; all parties print the same digest when the run is correct.
"""

import argparse
import hashlib

from mpyc.runtime import mpc
import mpyc.random


async def draw(secint, n):
    """One draw: a secret permutation of range(n) and its revealed number of fixed points.

    perm[i] == i is a secure equality test; only the count of fixed points of a permutation
    we then discard (or zero for the one we keep) is revealed."""
    perm = mpyc.random.random_permutation(secint, n)
    fixed_points = mpc.sum([perm[i] == i for i in range(n)])
    return perm, await mpc.output(fixed_points)


async def derangement(secint, n, draws=None):
    """A secret derangement of range(n), and the draws made (and those beyond `draws`).

    Without `draws`: draw until a permutation has no fixed point. With `draws`: exactly that
    many draws, keeping the first derangement; more only if none was one."""
    attempts, kept = 0, None
    while kept is None or (draws is not None and attempts < draws):
        attempts += 1
        perm, fixed = await draw(secint, n)
        if fixed == 0 and kept is None:
            kept = perm
    extra = max(0, attempts - draws) if draws is not None else 0
    return kept, attempts, extra


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--people", type=int, nargs="+", default=[3, 4, 5, 6, 7, 8])
    parser.add_argument("--draws", type=int, default=None)
    args = parser.parse_args()
    if any(n < 2 for n in args.people):
        parser.error("--people: a group needs at least 2 people")
    if args.draws is not None and args.draws < 1:
        parser.error("--draws: at least 1")

    secint = mpc.SecInt(16)
    await mpc.start()
    results = []
    for n in args.people:
        perm, attempts, extra = await derangement(secint, n, args.draws)
        assignment = [int(a) for a in await mpc.output(perm)]
        results.append(assignment)
        more = f" extra-draws={extra}" if extra else ""
        print(f"people={n} derangement={assignment} attempts={attempts}{more}", flush=True)
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
