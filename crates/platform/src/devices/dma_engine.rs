//! The `dma-engine` device model (helper: to be written).
