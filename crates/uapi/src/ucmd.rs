//! The size-extensible command protocol (to be written).
