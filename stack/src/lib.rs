//! Userspace TCP stack.
