//! Pinned pages and accounting (helper: to be written).
