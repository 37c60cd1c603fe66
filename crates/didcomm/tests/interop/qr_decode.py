#!/usr/bin/env python3
"""Decode QR codes with zxing-cpp (PyPI `zxing-cpp`), an independent QR reader, to show
that what `mpc-did invite` draws is scannable.

  qr_decode.py png FILE      decode a PNG (8-bit greyscale, as `--qr-png` writes)
  qr_decode.py terminal      decode the half-block terminal drawing read from stdin
                             (dark-terminal form: printed blocks are light modules)

Prints the decoded text (one line per code found); exit 1 if none.
Only the standard library plus zxing-cpp: PNG is read by hand (zlib + filters).
"""
import struct
import sys
import zlib

import zxingcpp


class Gray:
    """A greyscale image exposing the array interface zxing-cpp accepts."""

    def __init__(self, w, h, pixels: bytes):
        self._buf = pixels
        self.__array_interface__ = {
            "shape": (h, w),
            "typestr": "|u1",
            "data": pixels,
            "version": 3,
        }


def read_png(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, chunk = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and color == 0, "8-bit greyscale only"
        elif kind == b"IDAT":
            idat += chunk
    raw = zlib.decompress(idat)
    out, prev, i = bytearray(), bytearray(w), 0
    for _ in range(h):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + w])
        i += 1 + w
        for x in range(w):
            a = line[x - 1] if x else 0
            b = prev[x]
            c = prev[x - 1] if x else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + ((a + b) >> 1)) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line
        prev = line
    return Gray(w, h, bytes(out))


def read_terminal(text, scale=6):
    """Each character is one module wide and two modules tall; blocks are light."""
    lines = [l for l in text.split("\n") if l]
    cols = max(len(l) for l in lines)
    top = {"█": True, "▀": True, "▄": False, " ": False}
    bottom = {"█": True, "▀": False, "▄": True, " ": False}
    modules = []
    for l in lines:
        l = l.ljust(cols)
        modules.append([top[ch] for ch in l])
        modules.append([bottom[ch] for ch in l])
    # Surround with a light margin, as a dark terminal's text would sit on the screen.
    margin = 4
    w = (cols + 2 * margin) * scale
    h = (len(modules) + 2 * margin) * scale
    pix = bytearray(b"\xff" * (w * h))
    for y, row in enumerate(modules):
        for x, light in enumerate(row):
            if not light:
                for dy in range(scale):
                    start = ((y + margin) * scale + dy) * w + (x + margin) * scale
                    pix[start:start + scale] = b"\x00" * scale
    return Gray(w, h, bytes(pix))


def main():
    if sys.argv[1] == "png":
        img = read_png(sys.argv[2])
    else:
        img = read_terminal(sys.stdin.read())
    found = [r.text for r in zxingcpp.read_barcodes(img) if r.format == zxingcpp.BarcodeFormat.QRCode]
    for t in found:
        print(t)
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
