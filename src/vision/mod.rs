//! Vision building blocks: the fused Conv2d + BatchNorm + ReLU op and a ResNet block stack.
//!
//! - `conv` on the CPU, `cuda` as one implicit-GEMM kernel, `resnet` from torchvision-named
//!   safetensors: the machinery (BN folding, per-channel quantization, fused epilogues) vision
//!   encoders of multimodal LLMs need.

pub mod conv;
pub mod cuda;
pub mod resnet;
