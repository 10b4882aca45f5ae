//! easel core: image input/output, device choice and the shared error type.
