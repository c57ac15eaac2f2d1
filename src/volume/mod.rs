//! volume layer (work in progress).
