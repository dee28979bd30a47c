//! The owner's view of its process family: parents, children and descendants from `/proc`,
//! which of them are of the family, and which of our inodes they hold.

use super::*;

/// The parent pid of `pid` (from `/proc/<pid>/stat`).
pub(super) fn ppid_of(pid: i32) -> Option<i32> {
    stat_field(pid, 4)?.parse().ok()
}

/// Field `n` (from 1) of `/proc/<pid>/stat`.
pub(super) fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ')' ends it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n - 3).map(str::to_string)
}

/// The start time of `pid` (`/proc/<pid>/stat` field 22; 0 when unknown).
pub(super) fn start_time(pid: i32) -> u64 {
    stat_field(pid, 22)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Whether `pid` is of this process's family: a descendant, or a process a descendant forked
/// (see [`fork`]) that is still alive.
pub(super) fn in_family(srv: &Server, pid: i32) -> bool {
    is_descendant(pid) || srv.family_member(pid)
}

/// Whether `pid` is a descendant of this process.
pub(super) fn is_descendant(pid: i32) -> bool {
    descends_from(pid, std::process::id() as i32)
}

/// Whether process `pid` descends from `ancestor` (walking `/proc/<pid>/stat` parents).
pub(super) fn descends_from(pid: i32, ancestor: i32) -> bool {
    let mut p = pid;
    for _ in 0..64 {
        match ppid_of(p) {
            Some(pp) if pp == ancestor => return true,
            Some(pp) if pp > 1 => p = pp,
            _ => return false,
        }
    }
    false
}

/// The children of `pid` (of all its threads), or `None` when the kernel does not list them.
pub(super) fn children_of(pid: i32) -> Option<Vec<i32>> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(t) = t else { continue };
        let text = std::fs::read_to_string(t.path().join("children")).ok()?;
        out.extend(
            text.split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    Some(out)
}

/// Every descendant of this process, and of the members of its family.
pub(super) fn descendants(srv: &Server) -> BTreeSet<i32> {
    let me = std::process::id() as i32;
    let mut found = BTreeSet::new();
    let mut todo = vec![me];
    for pid in srv.family_alive() {
        if found.insert(pid) {
            todo.push(pid);
        }
    }
    while let Some(p) = todo.pop() {
        let Some(kids) = children_of(p) else {
            let mut all = descendants_by_scan(me);
            for pid in srv.family_alive() {
                all.insert(pid);
                all.extend(descendants_by_scan(pid));
            }
            return all;
        };
        for k in kids {
            if found.insert(k) {
                todo.push(k);
            }
        }
    }
    found
}

/// [`descendants`] from every process's parent (kernels without `children` files).
pub(super) fn descendants_by_scan(me: i32) -> BTreeSet<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    let mut kids: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for e in dir.flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            if let Some(pp) = ppid_of(pid) {
                kids.entry(pp).or_default().push(pid);
            }
        }
    }
    let mut found = BTreeSet::new();
    let mut todo = vec![me];
    while let Some(p) = todo.pop() {
        for &k in kids.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if found.insert(k) {
                todo.push(k);
            }
        }
    }
    found
}

/// Whether process `pid` has an fd of our memfd of inode `key` open.
pub(super) fn holds_inode(pid: i32, key: InodeKey) -> bool {
    memfds_of(pid).contains(&key)
}

/// What the descendants hold.
pub(super) struct Holdings {
    /// The live descendants.
    pub(super) pids: BTreeSet<i32>,
    /// The inodes of our memfds they have open.
    pub(super) inodes: BTreeSet<InodeKey>,
}

pub(super) fn holdings(srv: &Server) -> Holdings {
    let pids = descendants(srv);
    let inodes = pids.iter().flat_map(|&pid| memfds_of(pid)).collect();
    Holdings { pids, inodes }
}
