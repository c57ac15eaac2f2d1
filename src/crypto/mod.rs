//! crypto layer (work in progress).
