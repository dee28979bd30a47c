//! Selftest mock page table (helper: to be written).
