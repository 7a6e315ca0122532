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
