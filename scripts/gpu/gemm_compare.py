"""Side by side from one `gpu-check.sh bench` log: for every shape and
M, ferroq's linear next to its PyTorch peer — BF16 vs torch.matmul, W8A8 vs torch._int_mm, FP8
vs torch._scaled_mm — with TOPS, % of the device's dense tensor-core peak and the ratio
ferroq / PyTorch (> 1: ferroq faster). ferroq's figure includes its activation quantization,
PyTorch's is the bare GEMM on pre-quantized operands, so the ratio understates the GEMM alone.

    python3 scripts/gpu/gemm_compare.py BENCH_MD
"""
import re
import sys

# dense (no sparsity) tensor-core peaks in TFLOPS / TOPS: (bf16, int8 and fp8), from NVIDIA's
# H100 / H200 datasheets (the SXM parts; the PCIe H100 runs lower clocks and fewer SMs)
PEAKS = [
    ("H100 PCIe", 756.0, 1513.0),
    ("H100", 989.4, 1978.9),
    ("H200", 989.4, 1978.9),
]

ROW = re.compile(r"^\| ([^|]+?) \| (\d+) \| (\d+) × (\d+) \| ([\d.]+) \| ([\d.]+) \|$")


def peaks_for(text):
    for name, bf16, eight in PEAKS:
        if name in text:
            return name, bf16, eight
    return None, None, None


def rows(lines):
    out = {}
    for line in lines:
        m = ROW.match(line.strip())
        if m:
            kind, mm, n, k, us, tops = m.groups()
            out[(kind.strip(), int(mm), int(n), int(k))] = (float(us), float(tops))
    return out


def main():
    text = open(sys.argv[1]).read()
    # the ferroq linears' table comes before the PyTorch one
    split = text.find("## PyTorch GEMMs")
    if split < 0:
        sys.exit("no '## PyTorch GEMMs' section: run `gpu-check.sh bench` first")
    ours, theirs = rows(text[:split].splitlines()), rows(text[split:].splitlines())
    device, bf16_peak, eight_peak = peaks_for(text)
    pairs = [
        ("Bf16 (cuBLAS)", "torch.matmul bf16", bf16_peak),
        ("Bf16 (own)", "torch.matmul bf16", bf16_peak),
        ("W8a8 (wgmma)", "torch._int_mm int8", eight_peak),
        ("W8a8", "torch._int_mm int8", eight_peak),
        ("W8a8 (mma.sync)", "torch._int_mm int8", eight_peak),
        ("Fp8 (wgmma)", "torch._scaled_mm fp8", eight_peak),
        ("Fp8", "torch._scaled_mm fp8", eight_peak),
        ("Fp8 (mma.sync)", "torch._scaled_mm fp8", eight_peak),
    ]
    print()
    print(f"## ferroq vs PyTorch ({device or 'unknown device: no peak'})")
    print("| ferroq | peer | M | N × K | ferroq TOPS | % peak | peer TOPS | % peak | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    pct = lambda tops, peak: f"{100 * tops / peak:.0f}%" if peak else "–"
    for (kind, m, n, k), (us, tops) in sorted(ours.items(), key=lambda r: (r[0][2], r[0][3], r[0][1])):
        for mine, peer, peak in pairs:
            if kind != mine:
                continue
            other = theirs.get((peer, m, n, k))
            if other is None:
                continue
            ratio = other[0] / us  # their time over ours
            print(f"| {kind} | {peer} | {m} | {n} × {k} | {tops:.1f} | {pct(tops, peak)} | "
                  f"{other[1]:.1f} | {pct(other[1], peak)} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
