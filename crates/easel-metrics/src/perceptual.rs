//! (metrics helper fills this in)

/// Content and Gram style distances on the embedded EfficientNet-Lite0.
pub struct Perceptual;
