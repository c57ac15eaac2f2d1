//! nbd layer (work in progress).
