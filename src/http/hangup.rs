//! Whether the peer of a TCP socket has closed its side, asked without reading from it.
//!
//! The connection loop stops reading when its read buffer is full of requests it cannot start
//! yet (the pipeline or the output is at its bound). A close sent after those bytes cannot be
//! read past them, and glommio's `peek` sees the same queue of bytes, so the loop asks the
//! kernel instead: `poll(2)` reports `POLLRDHUP` once the peer's FIN has arrived, and `POLLHUP`
//! or `POLLERR` after a reset, however much unread data is queued before them.

use std::os::fd::AsRawFd;

/// True when the peer has shut its side down (FIN), reset the connection, or the socket failed.
/// Does not block: a `poll(2)` with a zero timeout.
pub(crate) fn peer_hung_up(socket: &impl AsRawFd) -> bool {
    let mut descriptor = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll(2) on one valid `pollfd` that lives across the call, with a zero timeout;
    // the descriptor is owned by `socket`, which is borrowed for the duration of the call.
    let ready = unsafe { libc::poll(&mut descriptor, 1, 0) };
    ready > 0 && descriptor.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}
