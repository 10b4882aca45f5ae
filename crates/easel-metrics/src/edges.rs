//! (metrics helper fills this in)
