//! Vision building blocks: the fused Conv2d + BatchNorm + ReLU op (`conv` on the CPU, `cuda`
//! as one implicit-GEMM kernel on the GPU) and a ResNet
//! basic-block stack that runs it from torchvision-named safetensors (`resnet`) — the
//! machinery (BN folding, per-channel weight quantization, fused epilogues) the vision
//! encoders of multimodal LLMs need.

pub mod conv;
pub mod cuda;
pub mod resnet;
