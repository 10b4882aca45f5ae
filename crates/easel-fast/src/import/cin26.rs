//! ONNX → safetensors import of the 26-style network.
