"""Large-message MPC workload: a secure inner product of long private vectors.

Party 0 and party 1 each hold a private vector of LENGTH integers; every party holds a
private weight. The parties compute <x0, x1> + sum of weights without revealing inputs.
Inputs are secret-shared in one message per party (LENGTH field elements each), and the
element-wise product is one resharing round of the same size: few rounds, messages of
hundreds of kilobytes to megabytes, the opposite shape to secretsanta.py.

For checking, inputs are derived from a public seed and the party id, so each party can
recompute the expected result in the clear and print whether the MPC result matches;
a real deployment would of course use private data.

Options after MPyC's own (-M, -I, -P, ...):
  --length L   vector length (default 100000)
  --seed S     public seed for the test inputs (default 1)

Output: `inner-product: <value>`, `valid: True/False`, `result-digest: <sha256>`.
"""

import argparse
import hashlib
import random

import numpy as np
from mpyc.runtime import mpc


def party_vector(seed, pid, length):
    rng = random.Random(seed * 1_000_003 + pid)
    return np.array([rng.randrange(-1000, 1000) for _ in range(length)], dtype=object)


def party_weight(seed, pid):
    return random.Random(seed * 7919 + pid).randrange(0, 10**6)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--length", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    m, pid = len(mpc.parties), mpc.pid
    secint = mpc.SecInt(64)
    await mpc.start()

    own = party_vector(args.seed, pid, args.length) if pid < 2 else None
    if m == 1:
        xs = [secint.array(party_vector(args.seed, 0, args.length)),
              secint.array(party_vector(args.seed, 1, args.length))]
    else:
        mine = secint.array(own if own is not None else np.zeros(args.length, dtype=object))
        xs = mpc.input(mine, senders=[0, 1])
    weights = mpc.input(secint(party_weight(args.seed, pid)), senders=list(range(m)))

    result = mpc.np_sum(mpc.np_multiply(xs[0], xs[1])) + mpc.sum(weights)
    value = int(await mpc.output(result))
    await mpc.shutdown()

    v0 = party_vector(args.seed, 0, args.length)
    v1 = party_vector(args.seed, 1, args.length)
    expected = int(sum(int(a) * int(b) for a, b in zip(v0, v1)))
    expected += sum(party_weight(args.seed, p) for p in range(m))
    valid = value == expected
    print(f"inner-product: {value}")
    print(f"valid: {valid}")
    print("result-digest:", hashlib.sha256(str(value).encode()).hexdigest())
    if not valid:
        raise SystemExit(1)


if __name__ == "__main__":
    mpc.run(main())
