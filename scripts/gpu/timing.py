"""CUDA-event timing shared by the PyTorch peer scripts (conv_torch.py, gemm_torch.py): three
warm-up calls, then `iters` calls between two events; returns milliseconds per call."""
import torch


def timed_ms(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters
