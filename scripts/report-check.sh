#!/usr/bin/env bash
# Renders the HTML reports of `ferroq eval` and `ferroq analyze` (real model, a few short
# chunks) in headless Chromium, screenshots them, and checks each screenshot really shows the
# plots: enough non-white pixels and the bar / histogram colours present. Installs Debian's
# chromium when it is missing. Output: target/report-check/{eval,analyze}.{html,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/report-check
mkdir -p "$OUT"
BIN=./target/release/ferroq
BASE=models/SmolLM2-135M-Instruct-f16
WIKI=../shared/data/wikitext-2-raw/wiki.test.raw
[ -x "$BIN" ] || cargo build --release
[ -d "$BASE" ] || bash models/fetch.sh
if ! command -v chromium >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
rm -rf "$OUT/w8a8"
$BIN quantize -m "$BASE" --recipe w8a8 -o "$OUT/w8a8" 2>/dev/null
$BIN eval -m "$OUT/w8a8" --baseline "$BASE" --data "$WIKI" --chunks 2 --report "$OUT/eval.html" >/dev/null
$BIN analyze -m "$BASE" --recipe w8a8 --data "$WIKI" --ctx 64 --chunks 1 \
  --report "$OUT/analyze.html" >/dev/null
shot() { # html png height
  timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$(mktemp -d)" --window-size=1000,"$3" --screenshot="$PWD/$2" \
    "file://$PWD/$1" >/dev/null 2>&1
}
shot "$OUT/eval.html" "$OUT/eval.png" 700
shot "$OUT/analyze.html" "$OUT/analyze.png" 2400
python3 - "$OUT/eval.png" "$OUT/analyze.png" <<'PY'
# A dependency-free PNG reader (8-bit RGB/RGBA, non-interlaced: what Chromium writes).
import struct, sys, zlib
def pixels(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    assert depth == 8 and ctype in (2, 6), f"{path}: unexpected PNG type {ctype}/{depth}"
    bpp = 3 if ctype == 2 else 4
    raw, stride = zlib.decompress(idat), w * bpp
    out, prev = [], bytearray(stride)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out.append(bytes(line)); prev = line
    return w, h, bpp, out
def near(px, rgb): return all(abs(p - q) <= 8 for p, q in zip(px, rgb))
ok = True
for path, need in [(sys.argv[1], [(0x6a, 0x9f, 0x58)]), (sys.argv[2], [(0x4a, 0x78, 0xc2), (0x6a, 0x9f, 0x58)])]:
    w, h, bpp, rows = pixels(path)
    total = inked = 0
    found = {c: 0 for c in need}
    for r in rows[::2]:
        for x in range(0, w * bpp, bpp * 2):
            px = r[x:x + 3]; total += 1
            if px != b"\xff\xff\xff": inked += 1
            for c in need:
                if near(px, c): found[c] += 1
    frac = inked / total
    print(f"{path}: {w}x{h}, {100 * frac:.1f}% non-white, plot colour pixels {list(found.values())}")
    if frac < 0.02 or any(v < 50 for v in found.values()):
        print(f"{path}: the plots did not render"); ok = False
sys.exit(0 if ok else 1)
PY
echo "report check passed: $OUT"
