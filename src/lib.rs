//! hioload-ws facade.
