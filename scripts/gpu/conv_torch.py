"""PyTorch's cuDNN on the shapes of examples/conv_cuda_bench.rs (ResNet-50 layers, batch 1 and
32): BF16 channels_last conv alone, and conv -> BatchNorm -> ReLU as PyTorch runs them (three
kernels). Runs on the device machine (scripts/gpu-check.sh bench). Prints a markdown table of
milliseconds per call (mean of ITERS after warm-up, CUDA events) and effective GB/s of the
conv alone (bf16 x read + weights read + output written)."""
import sys

import torch
from timing import timed_ms

ITERS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
SHAPES = [
    (3, 64, 7, 2, 224),
    (64, 64, 1, 1, 56),
    (64, 64, 3, 1, 56),
    (64, 256, 1, 1, 56),
    (128, 128, 3, 2, 56),
    (256, 256, 3, 1, 14),
    (256, 1024, 1, 1, 14),
    (512, 512, 3, 1, 7),
    (512, 2048, 1, 1, 7),
]


def timed(fn):
    return timed_ms(fn, ITERS)  # ms


def main():
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"cuDNN {torch.backends.cudnn.version()}, {ITERS} iterations")
    print("| conv (in→out, k, stride, H×W) | batch | cuDNN conv bf16 ms | GB/s | conv+bn+relu ms |")
    print("|---|---|---|---|---|")
    for cin, cout, k, s, hw in SHAPES:
        for batch in (1, 32):
            conv = torch.nn.Conv2d(cin, cout, k, s, k // 2, bias=True).to(dev, torch.bfloat16)
            conv = conv.to(memory_format=torch.channels_last)
            bn = torch.nn.BatchNorm2d(cout).to(dev, torch.bfloat16).eval()
            x = torch.randn(batch, cin, hw, hw, device=dev, dtype=torch.bfloat16)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                t_conv = timed(lambda: conv(x))
                t_seq = timed(lambda: torch.relu(bn(conv(x))))
                y = conv(x)
            moved = 2 * (x.numel() + conv.weight.numel() + y.numel())
            print(f"| {cin}→{cout}, {k}×{k}, /{s}, {hw}×{hw} | {batch} | {t_conv:.3f} | "
                  f"{moved / (t_conv * 1e-3) / 1e9:.0f} | {t_seq:.3f} |")


if __name__ == "__main__":
    main()
