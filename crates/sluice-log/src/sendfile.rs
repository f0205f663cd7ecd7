//! Zero-copy hand-off of stored bytes to a socket with `sendfile(2)`.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

/// A stored batch payload as a range of a segment file. Holding it keeps the file open
/// even if the segment is later closed or deleted.
#[derive(Debug, Clone)]
pub struct FileSlice {
    pub file: Arc<File>,
    pub position: u64,
    pub len: u64,
    pub base_offset: u64,
    pub record_count: u32,
}

/// Sends as much of `slice[sent..]` as the socket takes now; returns the bytes sent.
/// `WouldBlock` from a non-blocking socket comes back as an error for the caller to wait
/// on writability.
pub fn send_file_slice(socket: RawFd, slice: &FileSlice, sent: u64) -> std::io::Result<u64> {
    let remaining = slice.len.saturating_sub(sent);
    if remaining == 0 {
        return Ok(0);
    }
    let mut offset = libc::off_t::try_from(slice.position + sent)
        .map_err(|_| std::io::Error::other("file position beyond off_t"))?;
    let count = usize::try_from(remaining).unwrap_or(usize::MAX);
    // SAFETY: both descriptors are open for the duration of the call (the slice holds the
    // file, the caller owns the socket); `offset` is a valid, exclusively borrowed off_t.
    let n = unsafe { libc::sendfile(socket, slice.file.as_raw_fd(), &mut offset, count) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as u64)
}
