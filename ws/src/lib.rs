//! RFC 6455 protocol layer (see docs/ARCHITECTURE.md).
