//! Noise schedulers behind one trait.
