//! Keeping the agent's resident memory to what it uses: it runs on every node, so every
//! megabyte it holds is paid once per node.
//!
//! Most of an idle agent's RSS is not heap but its own executable: the kernel maps code and
//! read-only data 64 KiB around every page touched ("fault-around"), and start-up (argument and
//! config parsing, loading the eBPF object, the first xDS and CA exchanges) touches code spread
//! over nearly all of the text segment. Once configured, and again once the pods already on
//! the node are served, the agent therefore [`release_startup_pages`]: it unmaps the clean pages of its read-only file mappings (they
//! stay in the page cache, and whatever runs next faults back in what it needs) and hands free
//! heap memory back to the kernel.
//!
//! Not done, measured: `MADV_RANDOM` does not stop fault-around on this kernel; limiting
//! malloc's arenas (one per thread by default) saved nothing measurable at idle while it would
//! make the proxy workers contend for one arena lock; and setting any malloc threshold
//! (`M_TRIM_THRESHOLD`) turns off glibc's adaptive mmap threshold, after which every tunnel
//! buffer of 128 KiB or more is mmapped and unmapped again: a bulk transfer then spent a fifth
//! of the agents' CPU in page faults.

#![allow(unsafe_code)]

use std::io;

/// What [`release_startup_pages`] gave back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Read-only file mappings whose pages were unmapped.
    pub mappings: usize,
    /// Their resident size before, in KiB.
    pub kib: u64,
}

/// Unmaps the resident pages of the process's read-only, never-written file mappings (code and
/// constants of the executable and shared libraries) and trims the heap. Pages are faulted back
/// from the page cache when next used.
pub fn release_startup_pages() -> io::Result<Released> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = Released::default();
    for mapping in clean_file_mappings(&smaps) {
        // SAFETY: the range is one whole mapping of this process as the kernel listed it, backed
        // by a file, not writable, and without anonymous (copied-on-write) pages: every page in
        // it is an unmodified page of the file, so dropping it loses nothing and a later access
        // faults in the same bytes from the page cache. Threads running code in it meanwhile just
        // take that fault. A mapping that changed since the listing makes madvise fail, which is
        // ignored (the call is an optimization).
        let result = unsafe {
            libc::madvise(
                mapping.start as *mut libc::c_void,
                mapping.end - mapping.start,
                libc::MADV_DONTNEED,
            )
        };
        if result == 0 {
            released.mappings += 1;
            released.kib += mapping.rss_kib;
        }
    }
    // SAFETY: malloc_trim only releases free memory held by malloc; it has no precondition.
    unsafe {
        libc::malloc_trim(0);
    }
    Ok(released)
}

#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    rss_kib: u64,
}

/// The mappings of a `/proc/<pid>/smaps` listing that are file-backed, not writable and hold no
/// anonymous pages (so not the relocated read-only data of RELRO, which was written before it
/// was made read-only).
fn clean_file_mappings(smaps: &str) -> Vec<Mapping> {
    let mut found = Vec::new();
    let mut current: Option<(Mapping, bool)> = None;
    let mut finish = |current: Option<(Mapping, bool)>| {
        if let Some((mapping, true)) = current {
            found.push(mapping);
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            finish(current.take());
            let permissions = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            let candidate = path.starts_with('/')
                && permissions.starts_with('r')
                && !permissions.contains('w')
                && permissions.ends_with('p')
                && end > start;
            current = Some((
                Mapping {
                    start,
                    end,
                    rss_kib: 0,
                },
                candidate,
            ));
            continue;
        }
        let Some((mapping, candidate)) = current.as_mut() else {
            continue;
        };
        let value = || fields.clone().next().and_then(|v| v.parse::<u64>().ok());
        match first {
            "Rss:" => mapping.rss_kib = value().unwrap_or(0),
            // A copied-on-write page means the mapping was written: never drop it. (Dirty page
            // cache pages, of a binary written moments ago, are the file's current bytes.)
            "Anonymous:" if value() != Some(0) => {
                *candidate = false;
            }
            _ => {}
        }
    }
    finish(current);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0285000 r--p 00000000 fe:00 6988291                    /usr/bin/node-agent
Size:               2580 kB
Rss:                1292 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
55d0c0286000-55d0c08c0000 r-xp 00285000 fe:00 6988291                    /usr/bin/node-agent
Size:               6376 kB
Rss:                5964 kB
Shared_Dirty:          0 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
55d0c08c0000-55d0c0929000 r--p 008be000 fe:00 6988291                    /usr/bin/node-agent
Size:                420 kB
Rss:                 420 kB
Private_Dirty:       416 kB
Anonymous:           416 kB
55d0c0929000-55d0c092e000 rw-p 00926000 fe:00 6988291                    /usr/bin/node-agent
Size:                 20 kB
Rss:                  20 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0                          [heap]
Rss:                2272 kB
Anonymous:          2272 kB
7f1000000000-7f1000010000 r--s 00000000 00:0f 1055                       anon_inode:bpf-map
Rss:                 260 kB
Anonymous:             0 kB
7f2000000000-7f2000150000 r-xp 00028000 fe:00 1234                       /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 944 kB
Anonymous:             0 kB
7f3000000000-7f3000001000 r--s 00000000 fe:00 99                         /dev/shm/shared
Rss:                   4 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_file_mappings_are_released() {
        assert_eq!(
            clean_file_mappings(SMAPS),
            vec![
                Mapping {
                    start: 0x55d0c0000000,
                    end: 0x55d0c0285000,
                    rss_kib: 1292
                },
                Mapping {
                    start: 0x55d0c0286000,
                    end: 0x55d0c08c0000,
                    rss_kib: 5964
                },
                Mapping {
                    start: 0x7f2000000000,
                    end: 0x7f2000150000,
                    rss_kib: 944
                },
            ],
            "writable mappings, RELRO (written, then read-only), shared and anonymous \
             mappings are kept"
        );
    }

    /// Resident KiB of this process's clean read-only file mappings (what the release unmaps).
    fn clean_file_kib() -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        clean_file_mappings(&smaps).iter().map(|m| m.rss_kib).sum()
    }

    #[test]
    fn released_pages_are_unmapped_and_come_back_intact() {
        // Runs code and reads constants of this very binary after its pages were dropped.
        let before: String = (0..1000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        // Counted over the mappings the release is for (the binary's and libraries' code and
        // read-only data), not over every file-backed page of the process: the writable and
        // RELRO pages it keeps grew with the binary to near half of the whole. Other tests of
        // this binary run on other threads meanwhile and fault pages back in between the
        // release and the count (up to half of what was released, seen on an idle machine),
        // so a release must take at least a quarter away, and the best of three counts. Without
        // the release the count does not fall at all.
        let mut counts = Vec::new();
        for _ in 0..3 {
            let resident = clean_file_kib();
            let released = release_startup_pages().unwrap();
            let resident_after = clean_file_kib();
            assert!(released.mappings >= 1, "{released:?}");
            counts.push((resident, resident_after));
            if resident_after < resident * 3 / 4 {
                break;
            }
        }
        assert!(
            counts.iter().any(|(before, after)| *after < before * 3 / 4),
            "resident KiB of the clean file mappings (before, after) of each release: {counts:?}"
        );
        let after: String = (0..1000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        assert_eq!(before, after);
        assert!(format!("{:?}", Released::default()).contains("mappings"));
    }
}
