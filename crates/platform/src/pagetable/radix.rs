//! Radix page table (helper: to be written).
