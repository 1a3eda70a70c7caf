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

impl Limits {
    /// Checks that the limits make a working server; the error names the bad field, for a
    /// configuration error message.
    pub fn validate(&self) -> Result<(), String> {
        let control = crate::session::MAX_CONTROL_FRAME;
        let cap = crate::handshake::MAX_HEADERS_CAP;
        if self.max_frame_size == 0 || self.max_message_size == 0 {
            return Err("max_frame_size and max_message_size must be at least 1 byte".into());
        }
        if self.max_head_bytes < 256 {
            return Err(format!(
                "max_head_bytes must be at least 256 (is {})",
                self.max_head_bytes
            ));
        }
        if self.max_headers < 8 || self.max_headers > cap {
            return Err(format!(
                "max_headers must be within 8..={cap} (is {})",
                self.max_headers
            ));
        }
        if self.inplace_frame_max < control {
            return Err(format!(
                "inplace_frame_max must be at least {control} bytes, the largest control frame (is {})",
                self.inplace_frame_max
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let err = Limits {
            inplace_frame_max: 100,
            ..Limits::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.contains("inplace_frame_max"), "{err}");
        let err = Limits {
            max_headers: 1000,
            ..Limits::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.contains("max_headers"), "{err}");
        assert!(Limits {
            max_message_size: 0,
            ..Limits::default()
        }
        .validate()
        .is_err());
        assert!(Limits {
            max_head_bytes: 10,
            ..Limits::default()
        }
        .validate()
        .is_err());
    }
}
