//! Limits that bound what one peer can make the server hold.
//!
//! Every limit has a default a production server can live with; all are plain data so that the
//! facade can hot-reload them (`Session::set_limits`).

/// Protocol limits. `Default` gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted frame payload, in bytes (default 16 MiB). Larger → close 1009.
    pub max_frame_size: usize,
    /// Largest accepted message (sum of its fragments), in bytes (default 16 MiB). Larger → close 1009.
    pub max_message_size: usize,
    /// Largest HTTP request head, in bytes (default 8 KiB). Larger → HTTP 431.
    pub max_head_bytes: usize,
    /// Most HTTP request headers (default 64). More → HTTP 431.
    pub max_headers: usize,
    /// A frame whose total size (header + payload) is at most this many bytes is left unconsumed by
    /// `Session::receive` until it is whole, so that it can be handed out zero-copy (default 16 KiB).
    /// Larger frames stream into the session's assembly buffer. A transport's receive buffer must
    /// hold at least `2 * inplace_frame_max` bytes.
    pub inplace_frame_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_head_bytes: 8 << 10,
            max_headers: 64,
            inplace_frame_max: 16 << 10,
        }
    }
}
