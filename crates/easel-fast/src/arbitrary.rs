//! Arbitrary-style network (Ghiasi et al. 2017).
