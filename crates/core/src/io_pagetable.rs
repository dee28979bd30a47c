//! IOVA space of an IOAS (helper: to be written).
