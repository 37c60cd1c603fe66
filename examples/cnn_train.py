"""Train the small CNN that cnn_digits.py evaluates in MPC, once, in the clear.

Data: scikit-learn's handwritten digits (`sklearn.datasets.load_digits`: 1,797 images of
8x8 pixels with values 0..16, shipped inside scikit-learn, no download). The last
TEST_SIZE images are held out; cnn_digits.py classifies images from that part.

Model (the same layers cnn_digits.py runs on secret shares):
  input 8x8 (pixels / 16) -> conv 3x3, FILTERS filters, valid (6x6xF) + bias -> ReLU
  -> 2x2 average pool (3x3xF) -> dense 9F -> 10 + bias -> argmax.
Average pooling is linear, so in MPC it costs no communication; the ReLU is the only
non-linear layer before the final argmax.

Training: plain NumPy, mini-batch gradient descent with momentum on the softmax
cross-entropy, fixed seed, so running it again writes the same file (on the same NumPy).
Writes cnn_digits_weights.json next to this script (a few kB; weights rounded to 4
decimals, which is what the MPC uses).

Run: python cnn_train.py   (needs numpy and scikit-learn; see python-requirements.txt)
"""

import json
import pathlib

import numpy as np
from sklearn.datasets import load_digits

FILTERS = 8
TEST_SIZE = 297
EPOCHS = 60
BATCH = 32
RATE = 0.05
MOMENTUM = 0.9
SEED = 20261206
OUT = pathlib.Path(__file__).with_name("cnn_digits_weights.json")

# (36, 9): for each of the 6x6 output positions, the 9 input pixels of its 3x3 window.
PATCHES = np.array(
    [[(r + dr) * 8 + (c + dc) for dr in range(3) for dc in range(3)] for r in range(6) for c in range(6)]
)
# (9, 36) average pooling: output cell (pr, pc) averages the 2x2 block of conv outputs.
POOL = np.zeros((9, 36))
for pr in range(3):
    for pc in range(3):
        for dr in range(2):
            for dc in range(2):
                POOL[pr * 3 + pc, (2 * pr + dr) * 6 + (2 * pc + dc)] = 0.25


def data():
    digits = load_digits()
    x = digits.data / 16.0
    y = digits.target
    return x[:-TEST_SIZE], y[:-TEST_SIZE], x[-TEST_SIZE:], y[-TEST_SIZE:]


def forward(p, x):
    cols = x[:, PATCHES]  # (n, 36, 9)
    z = cols @ p["conv_w"] + p["conv_b"]  # (n, 36, F)
    a = np.maximum(z, 0)
    pooled = np.einsum("qs,nsf->nqf", POOL, a)  # (n, 9, F)
    flat = pooled.reshape(len(x), -1)  # (n, 9F)
    logits = flat @ p["dense_w"] + p["dense_b"]
    return logits, (cols, z, flat)


def gradients(p, x, y):
    logits, (cols, z, flat) = forward(p, x)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)
    d = prob
    d[np.arange(len(y)), y] -= 1
    d /= len(y)
    g = {"dense_w": flat.T @ d, "dense_b": d.sum(axis=0)}
    dflat = (d @ p["dense_w"].T).reshape(len(x), 9, FILTERS)
    da = np.einsum("qs,nqf->nsf", POOL, dflat)
    dz = da * (z > 0)
    g["conv_w"] = np.einsum("nsk,nsf->kf", cols, dz)
    g["conv_b"] = dz.sum(axis=(0, 1))
    return g


def main():
    rng = np.random.default_rng(SEED)
    xtr, ytr, xte, yte = data()
    p = {
        "conv_w": rng.normal(0, np.sqrt(2 / 9), (9, FILTERS)),
        "conv_b": np.zeros(FILTERS),
        "dense_w": rng.normal(0, np.sqrt(1 / (9 * FILTERS)), (9 * FILTERS, 10)),
        "dense_b": np.zeros(10),
    }
    v = {k: np.zeros_like(w) for k, w in p.items()}
    for _ in range(EPOCHS):
        order = rng.permutation(len(xtr))
        for s in range(0, len(order), BATCH):
            idx = order[s : s + BATCH]
            g = gradients(p, xtr[idx], ytr[idx])
            for k in p:
                v[k] = MOMENTUM * v[k] - RATE * g[k]
                p[k] += v[k]
    rounded = {k: np.round(w, 4) for k, w in p.items()}
    acc = float((forward(rounded, xte)[0].argmax(axis=1) == yte).mean())
    doc = {
        "model": "conv3x3(valid)+relu+avgpool2x2+dense, input 8x8 digits/16",
        "filters": FILTERS,
        "test_size": TEST_SIZE,
        "test_accuracy": round(acc, 4),
        "seed": SEED,
    }
    doc.update({k: w.tolist() for k, w in rounded.items()})
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {OUT.name}: test accuracy {acc:.4f} on {TEST_SIZE} held-out digits")


if __name__ == "__main__":
    main()
