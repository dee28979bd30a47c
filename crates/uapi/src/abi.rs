//! ABI structs and ioctl numbers (to be written).
