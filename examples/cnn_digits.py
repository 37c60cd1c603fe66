"""Secure CNN inference on handwritten digits: few rounds, large messages.

Party 0 holds the model (cnn_digits_weights.json, trained once by cnn_train.py) and the last
party holds the images (a batch of held-out digits from scikit-learn's `load_digits`, no
download); both inputs are secret-shared, and only the predicted classes are revealed:

  conv 3x3 (F filters) + bias -> ReLU -> 2x2 average pool -> dense -> argmax

The convolution and the dense layer are one secure matrix product each (one resharing
round, messages of batch x 36 x F and batch x 10 fixed-point numbers); the pooling is linear
(no communication); ReLU and argmax are secure comparisons, the only multi-round parts.
Every run with the same options does the same work: no data-dependent branch.

For checking, every party recomputes the prediction in the clear with the same (public,
for this test) weights and images and prints whether the secure result agrees; a real
deployment would of course keep them private.

Options after MPyC's own (-M, -I, -P, ...):
  --batch B    images per run (default 1; the evaluation's low/medium/high sizes)
  --offset O   first held-out image (default 0)

Output: `predictions: [...]`, `agree-with-plain: N/B`, `accuracy: X`, `valid: True/False`,
`result-digest: <sha256>` (the same on every party).
"""

import argparse
import hashlib
import importlib.util
import json
import pathlib

import numpy as np
from mpyc.runtime import mpc

WEIGHTS = pathlib.Path(__file__).with_name("cnn_digits_weights.json")
PATCHES = np.array(
    [[(r + dr) * 8 + (c + dc) for dr in range(3) for dc in range(3)] for r in range(6) for c in range(6)]
)
POOL = np.zeros((9, 36))
for pr in range(3):
    for pc in range(3):
        for dr in range(2):
            for dc in range(2):
                POOL[pr * 3 + pc, (2 * pr + dr) * 6 + (2 * pc + dc)] = 0.25


def load_digits():
    """The data `sklearn.datasets.load_digits` returns, read from the file it reads
    (`sklearn/datasets/data/digits.csv.gz`) without importing scikit-learn, whose import
    takes seconds and would dominate a small run's wall time. cnn_train.py uses
    load_digits itself; the images are the same (checked in examples/README.md)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise SystemExit("scikit-learn is not installed: pip install -r python-requirements.txt")
    data = np.loadtxt(pathlib.Path(spec.origin).parent / "datasets/data/digits.csv.gz", delimiter=",")
    return data[:, :-1], data[:, -1].astype(int)


def plain_logits(p, x):
    z = x[:, PATCHES] @ p["conv_w"] + p["conv_b"]
    pooled = np.einsum("qs,nsf->nqf", POOL, np.maximum(z, 0))
    return pooled.reshape(len(x), -1) @ p["dense_w"] + p["dense_b"]


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--offset", type=int, default=0)
    args = parser.parse_args()
    doc = json.loads(WEIGHTS.read_text())
    p = {k: np.array(doc[k]) for k in ("conv_w", "conv_b", "dense_w", "dense_b")}
    filters = doc["filters"]
    data, target = load_digits()
    test_x = data[-doc["test_size"] :] / 16.0
    test_y = target[-doc["test_size"] :]
    if args.batch < 1 or args.offset < 0 or args.offset + args.batch > len(test_x):
        parser.error(f"--batch/--offset: pick images within the {len(test_x)} held-out digits")
    x = test_x[args.offset : args.offset + args.batch]
    y = test_y[args.offset : args.offset + args.batch]

    secfxp = mpc.SecFxp(32)
    await mpc.start()
    owner, client = 0, len(mpc.parties) - 1
    me = mpc.pid

    def share(value, sender):
        # Non-senders pass zeros of the same shape (only the sender's values are used), and
        # every party marks the array non-integral: MPyC decides per party from this flag
        # whether a product needs truncation, so all parties must agree on it.
        mine = value if me == sender else np.zeros_like(value)
        return mpc.input(secfxp.array(mine, integral=False), senders=sender)

    conv_w, conv_b = share(p["conv_w"], owner), share(p["conv_b"], owner)
    dense_w, dense_b = share(p["dense_w"], owner), share(p["dense_b"], owner)
    images = share(x, client)

    n = args.batch
    cols = images[:, PATCHES].reshape(n * 36, 9)
    z = cols @ conv_w + conv_b  # (n*36, F): one secure matrix product
    a = mpc.np_maximum(z, 0).reshape(n, 6, 6, filters)  # ReLU: secure comparisons
    # 2x2 average pooling: sums of shares (no communication), then a public scale.
    blocks = a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2]
    flat = (blocks * 0.25).reshape(n, 9 * filters)  # (n, 9F), same order as POOL's rows
    logits = flat @ dense_w + dense_b  # (n, 10)
    predicted = await mpc.output(mpc.np_argmax(logits, axis=1))
    await mpc.shutdown()

    predicted = [int(round(float(v))) for v in np.atleast_1d(predicted)]
    plain = plain_logits(p, x)
    # Agreement allows fixed-point rounding between nearly equal logits (a near-tie).
    agree = sum(plain[i, c] >= plain[i].max() - 0.01 for i, c in enumerate(predicted))
    accuracy = float(np.mean(np.array(predicted) == y))
    print(f"predictions: {predicted}")
    print(f"agree-with-plain: {agree}/{n}")
    print(f"accuracy: {accuracy:.4f}")
    valid = agree == n
    print(f"valid: {valid}")
    print("result-digest:", hashlib.sha256(repr(predicted).encode()).hexdigest())
    if not valid:
        raise SystemExit(1)


if __name__ == "__main__":
    mpc.run(main())
