//! Where a log's batch writes and fsyncs go: the files ([`FileIo`]), or a backend that
//! fails or tears chosen ones on purpose ([`FaultyIo`], for tests). A log whose write or
//! fsync failed refuses every later change until it is reopened: after a failed fsync
//! the kernel may have dropped the dirty pages, so nothing written before it can be
//! trusted to be durable, and carrying on would promise what the disk does not hold.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// The writes and fsyncs of a log's segment data.
pub trait Io: std::fmt::Debug + Send + Sync {
    fn write_at(&self, file: &File, bytes: &[u8], position: u64) -> std::io::Result<()>;

    fn write_vectored_at(&self, file: &File, parts: &[&[u8]], position: u64)
    -> std::io::Result<()>;

    fn sync_data(&self, file: &File) -> std::io::Result<()>;
}

/// The files themselves.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileIo;

impl Io for FileIo {
    fn write_at(&self, file: &File, bytes: &[u8], position: u64) -> std::io::Result<()> {
        file.write_all_at(bytes, position)
    }

    fn write_vectored_at(
        &self,
        file: &File,
        parts: &[&[u8]],
        position: u64,
    ) -> std::io::Result<()> {
        crate::sys::write_all_vectored_at(file, parts, position)
    }

    fn sync_data(&self, file: &File) -> std::io::Result<()> {
        file.sync_data()
    }
}

/// A fault for the next write or fsync of a [`FaultyIo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next write writes nothing and fails.
    FailWrite,
    /// The next write writes its first `keep` bytes (at most all) and fails, as a
    /// write cut short by a full disk or a crash does.
    TearWrite { keep: usize },
    /// The next fsync fails.
    FailSync,
}

/// Real files, with faults injected where a test asks for them.
#[derive(Debug, Default)]
pub struct FaultyIo {
    armed: Mutex<VecDeque<Fault>>,
    injected: Mutex<u64>,
}

impl FaultyIo {
    /// Queues `fault` for the next operation of its kind.
    pub fn arm(&self, fault: Fault) {
        self.armed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(fault);
    }

    /// Forgets the faults not injected yet.
    pub fn disarm(&self) {
        self.armed.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        *self.injected.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, write: bool) -> Option<Fault> {
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        let at = armed
            .iter()
            .position(|f| matches!(f, Fault::FailSync) != write)?;
        let fault = armed.remove(at);
        if fault.is_some() {
            *self.injected.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        }
        fault
    }
}

fn injected() -> std::io::Error {
    std::io::Error::other("injected fault")
}

impl Io for FaultyIo {
    fn write_at(&self, file: &File, bytes: &[u8], position: u64) -> std::io::Result<()> {
        match self.take(true) {
            None => file.write_all_at(bytes, position),
            Some(Fault::TearWrite { keep }) => {
                let kept = bytes.get(..keep.min(bytes.len())).unwrap_or_default();
                file.write_all_at(kept, position)?;
                Err(injected())
            }
            Some(_) => Err(injected()),
        }
    }

    fn write_vectored_at(
        &self,
        file: &File,
        parts: &[&[u8]],
        position: u64,
    ) -> std::io::Result<()> {
        self.write_at(file, &parts.concat(), position)
    }

    fn sync_data(&self, file: &File) -> std::io::Result<()> {
        match self.take(false) {
            None => file.sync_data(),
            Some(_) => Err(injected()),
        }
    }
}
