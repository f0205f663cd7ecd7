//! Thin wrappers over system calls std does not offer.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::AsRawFd;

/// Writes all of `parts` at `position` with `pwritev(2)`: a batch header and its payload
/// reach the page cache in one call, without first copying them together.
pub fn write_all_vectored_at(
    file: &File,
    parts: &[&[u8]],
    mut position: u64,
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut slices = &mut slices[..];
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let offset = libc::off_t::try_from(position)
            .map_err(|_| std::io::Error::other("file position beyond off_t"))?;
        let count = libc::c_int::try_from(slices.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: IoSlice is ABI-compatible with iovec; the slices outlive the call and
        // `count` does not exceed their number.
        let n = unsafe { libc::pwritev(file.as_raw_fd(), slices.as_ptr().cast(), count, offset) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        position += n as u64;
        IoSlice::advance_slices(&mut slices, n as usize);
    }
    Ok(())
}
