//! easel fast path: feed-forward style transfer networks.
