//! format layer (work in progress).
