//! A randomized simulation of three cores on a faulty network (to be written).
