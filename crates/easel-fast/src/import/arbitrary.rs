//! ONNX → safetensors import of the arbitrary-style network.
