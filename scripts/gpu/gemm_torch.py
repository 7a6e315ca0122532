"""PyTorch's GEMMs on the shapes of examples/cuda_gemm_bench.rs, their peers:
torch.matmul (BF16, cuBLAS), torch._int_mm (INT8 -> INT32, cuBLASLt) and torch._scaled_mm (FP8
E4M3 with per-row x per-column scales, sm_89+), on pre-quantized operands (no activation
quantization in the timing). Also the device-to-device copy bandwidth, for the fused
quantization kernels' GB/s. Prints markdown: microseconds per call and TOPS."""
import sys

import torch
from timing import timed_ms

ITERS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
SHAPES = [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336), (8192, 8192)]
MS = [1, 16, 128, 512, 2048, 8192]


def timed(fn):
    return timed_ms(fn, ITERS) * 1e3  # us


def main():
    dev = torch.device("cuda")
    cap = torch.cuda.get_device_capability(0)
    print(f"device: {torch.cuda.get_device_name(0)} (sm_{cap[0]}{cap[1]}), torch {torch.__version__}")
    a = torch.empty(1 << 28, device=dev)
    b = torch.empty_like(a)
    us = timed(lambda: b.copy_(a))
    print(f"device-to-device copy: {2 * a.numel() * 4 / (us * 1e-6) / 1e9:.0f} GB/s (read + write)")
    print("| kind | M | N × K | µs | TOPS |")
    print("|---|---|---|---|---|")
    for n, k in SHAPES:
        w = torch.randn(n, k, device=dev)
        wb = w.to(torch.bfloat16)
        wi = (w * 40).clamp(-127, 127).to(torch.int8)
        w8 = w.to(torch.float8_e4m3fn) if cap >= (8, 9) else None
        for m in MS:
            if n == 8192 and m != 8192:
                continue
            x = torch.randn(m, k, device=dev)
            flops = 2 * m * n * k
            xb = x.to(torch.bfloat16)
            rows = [("torch.matmul bf16", lambda: xb @ wb.t())]
            # _int_mm needs M > 16 and K, N multiples of 8
            if m > 16:
                xi = (x * 40).clamp(-127, 127).to(torch.int8)
                rows.append(("torch._int_mm int8", lambda: torch._int_mm(xi, wi.t())))
            if w8 is not None and m % 16 == 0:
                x8 = x.to(torch.float8_e4m3fn)
                sa = torch.ones(m, 1, device=dev)
                sb = torch.ones(1, n, device=dev)
                rows.append(("torch._scaled_mm fp8", lambda: torch._scaled_mm(
                    x8, w8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)))
            for name, fn in rows:
                try:
                    us = timed(fn)
                    print(f"| {name} | {m} | {n} × {k} | {us:.1f} | {flops / (us * 1e-6) / 1e12:.1f} |")
                except RuntimeError as e:  # a shape a kernel does not take
                    print(f"| {name} | {m} | {n} × {k} | {str(e).splitlines()[0]} | – |")


if __name__ == "__main__":
    main()
