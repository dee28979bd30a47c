//! What a pin holds when the engine can hold the pages themselves: the file behind a
//! `MAP_SHARED` mapping ([`HeldFile`], with the engine's own mapping of it), the ranges a space
//! hands over at pin time ([`Held`]), and which pinned frames they back ([`HeldFrames`]).
//!
//! A held frame is reached through its file, not through the address space it was pinned
//! from, for as long as it stays pinned, as a pin holds pages on Linux. Where the engine could
//! map the file, an access is a copy to or from that mapping (the fault-guarded copies of
//! [`uiommu_sys::FileMap`]: a file shrunk under it is a fault, not a crash), and the
//! descriptor is not kept; where the engine could not map it (not x86-64, a file that cannot
//! be mapped) it is `pread`/`pwrite` on the descriptor.

use crate::addr::{UserVa, PAGE_SIZE};
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;

/// A file held for pins, and the engine's own shared mapping of it when it could make one.
#[derive(Debug)]
pub struct HeldFile {
    /// The descriptor, kept only where there is no mapping: in the in-process engine it is
    /// one of the program's descriptors, which the program may close (`close_range`) and the
    /// number then name another file.
    file: Option<std::fs::File>,
    map: Option<uiommu_sys::FileMap>,
    /// (device, inode): two held files with the same are the same memory.
    id: (u64, u64),
}

impl HeldFile {
    /// Hold `file` (opened for writing when `writable`), mapping all of it as it is now.
    pub fn new(file: std::fs::File, writable: bool) -> HeldFile {
        let md = file.metadata().ok();
        let len = md.as_ref().map_or(0, |m| m.len());
        let map = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0)
            .and_then(|l| uiommu_sys::FileMap::new(file.as_fd(), l, writable).ok());
        let id = md.map_or((0, 0), |m| (m.dev(), m.ino()));
        let file = map.is_none().then_some(file);
        HeldFile { file, map, id }
    }

    /// Whether `[offset, offset + len)` can be reached: mapped, or through the descriptor.
    pub fn reaches(&self, offset: u64, len: u64) -> bool {
        self.file.is_some() || self.mapped(offset, len)
    }

    /// Whether the engine's mapping covers `[offset, offset + len)`: accesses there are
    /// copies, not system calls.
    pub fn mapped(&self, offset: u64, len: u64) -> bool {
        self.map
            .as_ref()
            .is_some_and(|m| offset.checked_add(len).is_some_and(|e| e <= m.len() as u64))
    }

    /// Read `buf.len()` bytes at `offset`; `false` when the bytes are not there (a fault).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> bool {
        match &self.map {
            Some(m) if self.mapped(offset, buf.len() as u64) => m.read(offset, buf),
            _ => self
                .file
                .as_ref()
                .is_some_and(|f| f.read_exact_at(buf, offset).is_ok()),
        }
    }

    /// Write `data` at `offset`; `false` when it could not (read-only, past the end).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> bool {
        match &self.map {
            Some(m) if self.mapped(offset, data.len() as u64) => m.write(offset, data),
            _ => self
                .file
                .as_ref()
                .is_some_and(|f| f.write_all_at(data, offset).is_ok()),
        }
    }

    /// Copy `len` bytes from `src` at `src_off` to `dst` at `dst_off` in one move between the
    /// two mappings. `None` when it cannot be done so (a side not mapped there, the same
    /// memory overlapping) or it faulted: the caller then copies through a buffer, which also
    /// tells which side faulted.
    pub fn copy(
        dst: &HeldFile,
        dst_off: u64,
        src: &HeldFile,
        src_off: u64,
        len: u64,
    ) -> Option<()> {
        let (dm, sm) = (dst.map.as_ref()?, src.map.as_ref()?);
        if dst.id == src.id
            && dst_off < src_off.saturating_add(len)
            && src_off < dst_off.saturating_add(len)
        {
            return None;
        }
        uiommu_sys::FileMap::copy(dm, dst_off, sm, src_off, usize::try_from(len).ok()?)
            .then_some(())
    }
}

/// A range of a space's pages whose memory the engine holds itself (a pin of `MAP_SHARED`
/// memory: the file behind it, as a pin holds pages on Linux), from [`UserMemory::hold`].
#[derive(Clone, Debug)]
pub struct Held {
    /// First address (page-aligned).
    pub va: UserVa,
    /// Length in bytes (whole pages).
    pub len: u64,
    /// The file.
    pub file: Arc<HeldFile>,
    /// The file offset of `va`.
    pub offset: u64,
}

/// One run of held frames: the file and its offset at the run's first frame.
#[derive(Clone, Debug)]
pub(crate) struct HeldRun {
    pub(crate) npages: u64,
    file: Arc<HeldFile>,
    offset: u64,
}

/// The frames whose memory the engine holds ([`Held`]): reached through the file, not the
/// space, for as long as they stay pinned, whatever the process does to its address space
/// (munmap, MAP_FIXED over it, exit).
#[derive(Default, Debug)]
pub struct HeldFrames {
    /// First frame of each run → run (runs never overlap).
    pub(crate) runs: BTreeMap<u64, HeldRun>,
}

impl HeldFrames {
    /// The run holding frame `pfn`: its file, the file offset of that frame, the frames left.
    pub(crate) fn at(&self, pfn: u64) -> Option<(&Arc<HeldFile>, u64, u64)> {
        let (&start, run) = self.runs.range(..=pfn).next_back()?;
        let k = pfn - start;
        (k < run.npages).then(|| (&run.file, run.offset + k * PAGE_SIZE, run.npages - k))
    }

    /// Hold `[first, first + npages)` through `file` from `offset`, where nothing is held yet.
    pub(crate) fn insert(&mut self, first: u64, npages: u64, file: &Arc<HeldFile>, offset: u64) {
        let mut p = first;
        let end = first + npages;
        while p < end {
            if let Some((_, _, left)) = self.at(p) {
                p += left;
                continue;
            }
            let next = self.runs.range(p..end).next().map_or(end, |(&s, _)| s);
            self.runs.insert(
                p,
                HeldRun {
                    npages: next - p,
                    file: file.clone(),
                    offset: offset + (p - first) * PAGE_SIZE,
                },
            );
            p = next;
        }
    }

    /// Stop holding `[first, first + npages)` (runs partly inside are cut).
    pub(crate) fn remove(&mut self, first: u64, npages: u64) {
        let end = first.saturating_add(npages);
        if let Some((&s, run)) = self.runs.range(..first).next_back() {
            if s + run.npages > first {
                let run = run.clone();
                self.runs.get_mut(&s).expect("run").npages = first - s;
                if s + run.npages > end {
                    self.runs.insert(
                        end,
                        HeldRun {
                            npages: s + run.npages - end,
                            file: run.file.clone(),
                            offset: run.offset + (end - s) * PAGE_SIZE,
                        },
                    );
                }
            }
        }
        let inside: Vec<u64> = self.runs.range(first..end).map(|(&s, _)| s).collect();
        for s in inside {
            let run = self.runs.remove(&s).expect("run");
            if s + run.npages > end {
                self.runs.insert(
                    end,
                    HeldRun {
                        npages: s + run.npages - end,
                        offset: run.offset + (end - s) * PAGE_SIZE,
                        file: run.file,
                    },
                );
            }
        }
    }

    /// Frames held.
    pub fn frames(&self) -> u64 {
        self.runs.values().map(|r| r.npages).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_frames_are_found_cut_and_never_overlap() {
        let f = Arc::new(HeldFile::new(
            std::fs::File::open("/dev/null").unwrap(),
            false,
        ));
        let mut h = HeldFrames::default();
        h.insert(10, 4, &f, 0);
        assert_eq!(h.frames(), 4);
        assert_eq!(
            h.at(12).map(|(_, off, left)| (off, left)),
            Some((2 * PAGE_SIZE, 2))
        );
        assert!(h.at(14).is_none() && h.at(9).is_none());
        // Held already: kept as it was; only the new frames are added.
        h.insert(12, 4, &f, 100 * PAGE_SIZE);
        assert_eq!(h.frames(), 6);
        assert_eq!(h.at(13).map(|(_, off, _)| off), Some(3 * PAGE_SIZE));
        assert_eq!(h.at(15).map(|(_, off, _)| off), Some(103 * PAGE_SIZE));
        // A hole cut in the middle of a run, then the rest.
        h.remove(11, 2);
        assert_eq!(h.frames(), 4);
        assert!(h.at(11).is_none() && h.at(12).is_none());
        assert_eq!(
            h.at(13).map(|(_, off, left)| (off, left)),
            Some((3 * PAGE_SIZE, 1))
        );
        assert_eq!(h.at(10).map(|(_, _, left)| left), Some(1));
        h.remove(0, 100);
        assert_eq!(h.frames(), 0);
    }

    fn memfd(len: u64) -> std::fs::File {
        let f = tempfile_in_shm();
        f.set_len(len).unwrap();
        f
    }

    fn tempfile_in_shm() -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "uiommu-held-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn a_held_file_is_reached_through_its_mapping_and_past_it_by_pread() {
        let f = memfd(2 * PAGE_SIZE);
        let h = HeldFile::new(f.try_clone().unwrap(), true);
        assert!(h.mapped(0, 2 * PAGE_SIZE) || cfg!(not(target_arch = "x86_64")));
        assert!(h.write_at(100, b"pinned"));
        let mut b = [0u8; 6];
        f.read_exact_at(&mut b, 100).unwrap();
        assert_eq!(&b, b"pinned");
        // The file grew after it was held: the new part is not this hold's (a pin of it
        // holds the file anew, `ProcessMemory::shared_files`); where the file could not be
        // mapped, pread reaches all of it.
        f.set_len(3 * PAGE_SIZE).unwrap();
        f.write_all_at(b"grown", 2 * PAGE_SIZE).unwrap();
        let mut g = [0u8; 5];
        if h.mapped(0, PAGE_SIZE) {
            assert!(!h.reaches(2 * PAGE_SIZE, 5) && !h.read_at(2 * PAGE_SIZE, &mut g));
            let again = HeldFile::new(f.try_clone().unwrap(), true);
            assert!(again.read_at(2 * PAGE_SIZE, &mut g));
        } else {
            assert!(h.read_at(2 * PAGE_SIZE, &mut g));
        }
        assert_eq!(&g, b"grown");
        // It shrank: a fault, not a crash, on either path.
        f.set_len(PAGE_SIZE).unwrap();
        let mut c = [0u8; 8];
        assert!(!h.read_at(PAGE_SIZE, &mut c));
        assert!(h.read_at(0, &mut c));
    }

    #[test]
    fn copies_between_held_files_refuse_overlap_of_the_same_memory() {
        let f = memfd(4 * PAGE_SIZE);
        let a = HeldFile::new(f.try_clone().unwrap(), true);
        let b = HeldFile::new(f.try_clone().unwrap(), true);
        assert!(a.write_at(0, &[3u8; 4096]));
        if cfg!(target_arch = "x86_64") {
            assert_eq!(HeldFile::copy(&b, PAGE_SIZE, &a, 0, PAGE_SIZE), Some(()));
            let mut out = [0u8; 4096];
            assert!(b.read_at(PAGE_SIZE, &mut out));
            assert_eq!(out, [3u8; 4096]);
        }
        assert_eq!(HeldFile::copy(&b, 100, &a, 0, PAGE_SIZE), None);
    }
}
