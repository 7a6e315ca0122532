// gate (n) = silu(gate) * up: the SwiGLU MLP's elementwise step.
extern "C" __global__ void silu_mul(float* __restrict__ gate, const float* __restrict__ up, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// gate (n) = gelu_tanh(gate) * up: GeGLU (PyTorch's gelu(approximate="tanh") in f32).
extern "C" __global__ void gelu_mul(float* __restrict__ gate, const float* __restrict__ up, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float g = gate[i];
        const float inner = 0.7978846f * (g + 0.044715f * g * g * g);
        gate[i] = 0.5f * g * (1.0f + tanhf(inner)) * up[i];
    }
}

// x (n) = x * a (mode 0: Gemma's embedding scale) or a * tanh(x / a) (mode 1: soft-capping).
extern "C" __global__ void pointwise(float* __restrict__ x, int n, int mode, float a) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        x[i] = mode == 0 ? x[i] * a : tanhf(x[i] / a) * a;
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
