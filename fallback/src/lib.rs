//! Kernel transport (see docs/ARCHITECTURE.md).
