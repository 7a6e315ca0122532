// gate (n) = silu(gate) * up: the SwiGLU MLP's elementwise step.
extern "C" __global__ void silu_mul(float* __restrict__ gate, const float* __restrict__ up, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// x (n) += y: the residual add where no norm follows (the last layer's output).
extern "C" __global__ void add_assign(float* __restrict__ x, const float* __restrict__ y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        x[i] += y[i];
}

// x (rows, n) += b (n): a linear's bias (Qwen2's q/k/v) after the GEMM.
extern "C" __global__ void add_bias(float* __restrict__ x, const float* __restrict__ b, int rows,
                                    int n) {
    const long total = (long)rows * n;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total;
         i += (long)gridDim.x * blockDim.x)
        x[i] += b[i % n];
}
