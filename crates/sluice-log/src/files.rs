//! A process-wide bound on open segment files. Every segment keeps its file in a
//! [`FileSlot`]; a slot opens its file on first use, and once more files are open than
//! the budget allows, the least recently used slot (a CLOCK sweep over the open ones)
//! closes its file, which the next use opens again. So a broker with a hundred thousand
//! logs holds as many files open as the budget says, not one per log.
//!
//! A file handed out (`Arc<File>`, to a write, an fsync job or a zero-copy read) stays
//! valid after its slot is closed: the descriptor goes when the last handle does.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::error::LogError;

/// Budget when none is set: most systems allow 1,024 descriptors or more per process,
/// and connections need some too.
pub const OPEN_FILES_DEFAULT: usize = 512;

static BUDGET: AtomicUsize = AtomicUsize::new(OPEN_FILES_DEFAULT);
static OPEN: AtomicUsize = AtomicUsize::new(0);
static RING: Mutex<Ring> = Mutex::new(Ring {
    slots: Vec::new(),
    hand: 0,
});

struct Ring {
    slots: Vec<Weak<FileSlot>>,
    hand: usize,
}

/// Sets how many segment files may be open at once (at least 16).
pub fn set_open_files_max(max: usize) {
    BUDGET.store(max.max(16), Ordering::Relaxed);
}

pub fn open_files_max() -> usize {
    BUDGET.load(Ordering::Relaxed)
}

/// Segment files open now.
pub fn open_files() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// One segment's file: open or not, and whether it was used since the sweep last
/// passed.
#[derive(Debug)]
pub struct FileSlot {
    file: Mutex<Option<Arc<File>>>,
    used: AtomicBool,
    /// In the ring (only while open).
    listed: AtomicBool,
    writable: bool,
}

impl FileSlot {
    /// A slot whose file opens for reading and writing (`writable`) or reading only.
    pub fn new(writable: bool) -> Arc<Self> {
        Arc::new(FileSlot {
            file: Mutex::new(None),
            used: AtomicBool::new(false),
            listed: AtomicBool::new(false),
            writable,
        })
    }

    /// A slot holding `file`, already open.
    pub fn with(file: File, writable: bool) -> Arc<Self> {
        let slot = Self::new(writable);
        slot.put(file);
        slot
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<File>>> {
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(self: &Arc<Self>, file: File) -> Arc<File> {
        let file = Arc::new(file);
        {
            let mut held = self.lock();
            if held.is_none() {
                OPEN.fetch_add(1, Ordering::Relaxed);
            }
            *held = Some(Arc::clone(&file));
        }
        self.used.store(true, Ordering::Relaxed);
        if !self.listed.swap(true, Ordering::AcqRel) {
            let mut ring = RING.lock().unwrap_or_else(|p| p.into_inner());
            // Slots dropped while open leave dead entries: sweep them out once they
            // outnumber the open files.
            if ring.slots.len() > 2 * OPEN.load(Ordering::Relaxed) + 64 {
                ring.slots.retain(|w| w.strong_count() > 0);
            }
            ring.slots.push(Arc::downgrade(self));
        }
        if OPEN.load(Ordering::Relaxed) > BUDGET.load(Ordering::Relaxed) {
            evict();
        }
        file
    }

    /// The file, opened from `path` if the slot is closed.
    pub fn get(self: &Arc<Self>, path: &Path) -> Result<Arc<File>, LogError> {
        if let Some(file) = self.lock().as_ref() {
            self.used.store(true, Ordering::Relaxed);
            return Ok(Arc::clone(file));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(self.writable)
            .open(path)
            .map_err(LogError::io(path))?;
        Ok(self.put(file))
    }

    /// The file if it is open now.
    pub fn current(&self) -> Option<Arc<File>> {
        self.lock().clone()
    }

    pub fn is_open(&self) -> bool {
        self.lock().is_some()
    }

    /// Closes the file (it opens again on the next use).
    pub fn close(&self) {
        if self.lock().take().is_some() {
            OPEN.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for FileSlot {
    fn drop(&mut self) {
        let held = self.file.get_mut().unwrap_or_else(|p| p.into_inner());
        if held.take().is_some() {
            OPEN.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Closes the files of slots not used since the sweep last passed them until the
/// budget holds again (or every slot was looked at twice).
fn evict() {
    let mut ring = RING.lock().unwrap_or_else(|p| p.into_inner());
    let mut looked = 0;
    let limit = ring.slots.len().saturating_mul(2);
    while OPEN.load(Ordering::Relaxed) > BUDGET.load(Ordering::Relaxed) && looked < limit {
        looked += 1;
        if ring.slots.is_empty() {
            return;
        }
        if ring.hand >= ring.slots.len() {
            ring.hand = 0;
        }
        let hand = ring.hand;
        let Some(slot) = ring.slots.get(hand).and_then(Weak::upgrade) else {
            ring.slots.swap_remove(hand);
            continue;
        };
        if slot.used.swap(false, Ordering::Relaxed) {
            ring.hand += 1;
            continue;
        }
        // A slot in use right now is passed over rather than waited for.
        let Ok(mut held) = slot.file.try_lock() else {
            ring.hand += 1;
            continue;
        };
        if held.take().is_some() {
            OPEN.fetch_sub(1, Ordering::Relaxed);
        }
        drop(held);
        slot.listed.store(false, Ordering::Release);
        ring.slots.swap_remove(hand);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_stay_within_the_budget_and_reopen_on_use() {
        let dir = tempfile::tempdir().unwrap();
        let before = open_files();
        set_open_files_max(before + 16);
        let slots: Vec<(std::path::PathBuf, Arc<FileSlot>)> = (0..100)
            .map(|i| {
                let path = dir.path().join(format!("f{i}"));
                std::fs::write(&path, format!("file {i}")).unwrap();
                (path, FileSlot::new(false))
            })
            .collect();
        // Other tests open files beside this one: allow for a few of theirs.
        for (path, slot) in &slots {
            slot.get(path).unwrap();
            assert!(open_files() <= before + 24, "{} open", open_files());
        }
        let open = slots.iter().filter(|(_, s)| s.is_open()).count();
        assert!(open <= 16, "{open} of this test's files open");
        // A closed slot opens again and reads the same bytes.
        let (path, slot) = &slots[0];
        let file = slot.get(path).unwrap();
        let mut buf = [0u8; 6];
        std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, 0).unwrap();
        assert_eq!(&buf, b"file 0");
        drop(slots);
        set_open_files_max(OPEN_FILES_DEFAULT);
    }
}
