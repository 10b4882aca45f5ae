//! 26-style conditional-instance-norm network (Dumoulin et al. 2017).
