//! A FUSE pass-through filesystem for disk-fault tests (issue 22): files
//! live in a backing directory, and the test can
//! - fail writes or fsyncs with EIO, or writes with ENOSPC, on command;
//! - keep written-but-unsynced data apart (like LazyFS) and drop it on a
//!   simulated power cut: only what an fsync reached survives.
//!
//! Written data goes to an in-memory copy of the file (loaded from the
//! backing file on first write); reads see it; fsync writes the dirty range
//! to the backing file and syncs it. A failed fsync drops the file's unsynced
//! data, as Linux may after a writeback error ("fsyncgate"): nothing retried
//! later can bring it back. Metadata (create, rename, unlink, mkdir) goes
//! to the backing directory at once. Files are opened with direct I/O, so
//! the kernel's page cache holds nothing the filesystem dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

const TTL: Duration = Duration::from_secs(0);
const FOPEN_DIRECT_IO: u32 = 1;

/// What the test switches on.
#[derive(Debug, Default, Clone, Copy)]
pub struct Faults {
    pub fail_writes: bool,
    pub fail_fsyncs: bool,
    pub disk_full: bool,
}

#[derive(Default)]
struct Dirty {
    /// The file's whole content as the writer sees it.
    data: Vec<u8>,
    /// The range not yet synced (lo, hi), and whether the length changed.
    range: Option<(u64, u64)>,
    resized: bool,
}

#[derive(Default)]
struct State {
    faults: Faults,
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    /// Per relative path: the in-memory content of files written since
    /// their last fsync (or kept clean after it while open).
    files: HashMap<PathBuf, Dirty>,
    /// Counters: (fsyncs failed, writes failed, bytes dropped by cuts).
    pub failed_fsyncs: u64,
    pub failed_writes: u64,
    pub dropped_bytes: u64,
}

/// The handle the test keeps: faults on and off, power cut, counters.
#[derive(Clone)]
pub struct Control(Arc<Mutex<State>>);

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Drop every written-but-unsynced byte (the processes using the files
    /// must be dead: this is the machine losing power). Returns how many
    /// bytes were dropped.
    pub fn power_cut(&self) -> u64 {
        let mut s = self.lock();
        let mut dropped = 0;
        for d in s.files.values() {
            if let Some((lo, hi)) = d.range {
                dropped += hi - lo;
            }
        }
        s.files.clear();
        s.dropped_bytes += dropped;
        dropped
    }

    /// (failed fsyncs, failed writes, bytes dropped by power cuts).
    pub fn counters(&self) -> (u64, u64, u64) {
        let s = self.lock();
        (s.failed_fsyncs, s.failed_writes, s.dropped_bytes)
    }
}

struct FaultFs {
    backing: PathBuf,
    control: Control,
}

/// A mounted fault filesystem; unmounted on drop.
pub struct Mount {
    pub mountpoint: PathBuf,
    pub control: Control,
    session: Option<fuser::BackgroundSession>,
}

impl Drop for Mount {
    fn drop(&mut self) {
        drop(self.session.take());
    }
}

/// Why FUSE cannot be used here, if it cannot: a filesystem is mounted
/// and unmounted to find out.
pub fn unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse does not exist".into());
    }
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return Some(e.to_string()),
    };
    match Mount::new(&dir.path().join("b"), &dir.path().join("m")) {
        Ok(m) => {
            drop(m);
            None
        }
        Err(e) => Some(e),
    }
}

impl Mount {
    /// Mount a fault filesystem over `backing` (created) at `mountpoint`
    /// (created).
    pub fn new(backing: &Path, mountpoint: &Path) -> Result<Mount, String> {
        std::fs::create_dir_all(backing).map_err(|e| format!("{backing:?}: {e}"))?;
        std::fs::create_dir_all(mountpoint).map_err(|e| format!("{mountpoint:?}: {e}"))?;
        let mut state = State {
            next_ino: 2,
            ..State::default()
        };
        state.paths.insert(1, PathBuf::new());
        state.inos.insert(PathBuf::new(), 1);
        let control = Control(Arc::new(Mutex::new(state)));
        let fs = FaultFs {
            backing: backing.to_path_buf(),
            control: control.clone(),
        };
        let session = fuser::spawn_mount2(
            fs,
            mountpoint,
            &[MountOption::FSName("walkeeper-faultfs".into())],
        )
        .map_err(|e| format!("mounting FUSE at {mountpoint:?}: {e}"))?;
        // The mount is there once the root reports the FUSE fs.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string("/proc/mounts")
            .map(|m| !m.contains(&mountpoint.display().to_string()))
            .unwrap_or(true)
        {
            if std::time::Instant::now() > deadline {
                return Err(format!("{mountpoint:?} did not appear in /proc/mounts"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Mount {
            mountpoint: mountpoint.to_path_buf(),
            control,
            session: Some(session),
        })
    }
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn attr_of(ino: u64, md: &std::fs::Metadata, size: Option<u64>) -> FileAttr {
    let t = |s: i64, ns: i64| {
        if s >= 0 {
            UNIX_EPOCH + Duration::new(s as u64, ns as u32)
        } else {
            UNIX_EPOCH
        }
    };
    let kind = if md.is_dir() {
        FileType::Directory
    } else if md.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    let size = size.unwrap_or(md.size());
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: t(md.atime(), md.atime_nsec()),
        mtime: t(md.mtime(), md.mtime_nsec()),
        ctime: t(md.ctime(), md.ctime_nsec()),
        crtime: SystemTime::UNIX_EPOCH,
        kind,
        perm: (md.mode() & 0o7777) as u16,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

impl FaultFs {
    fn rel(&self, ino: u64) -> Option<PathBuf> {
        self.control.lock().paths.get(&ino).cloned()
    }

    fn ino_for(&self, rel: &Path) -> u64 {
        let mut s = self.control.lock();
        if let Some(i) = s.inos.get(rel) {
            return *i;
        }
        let i = s.next_ino;
        s.next_ino += 1;
        s.inos.insert(rel.to_path_buf(), i);
        s.paths.insert(i, rel.to_path_buf());
        i
    }

    fn attr(&self, ino: u64, rel: &Path) -> Result<FileAttr, i32> {
        let md = std::fs::symlink_metadata(self.backing.join(rel)).map_err(|e| errno(&e))?;
        let size = self
            .control
            .lock()
            .files
            .get(rel)
            .map(|d| d.data.len() as u64);
        Ok(attr_of(ino, &md, size))
    }

    fn entry(&self, parent: u64, name: &OsStr) -> Result<(u64, FileAttr), i32> {
        let rel = self.rel(parent).ok_or(libc::ENOENT)?.join(name);
        std::fs::symlink_metadata(self.backing.join(&rel)).map_err(|e| errno(&e))?;
        let ino = self.ino_for(&rel);
        Ok((ino, self.attr(ino, &rel)?))
    }

    /// The in-memory copy of `rel`, loaded from the backing file if absent.
    fn with_dirty<T>(&self, rel: &Path, f: impl FnOnce(&mut Dirty) -> T) -> Result<T, i32> {
        let mut s = self.control.lock();
        if !s.files.contains_key(rel) {
            let data = std::fs::read(self.backing.join(rel)).map_err(|e| errno(&e))?;
            s.files.insert(
                rel.to_path_buf(),
                Dirty {
                    data,
                    range: None,
                    resized: false,
                },
            );
        }
        Ok(f(s.files.get_mut(rel).expect("inserted")))
    }

    fn sync(&self, rel: &Path) -> Result<(), i32> {
        let mut s = self.control.lock();
        if s.faults.fail_fsyncs {
            s.failed_fsyncs += 1;
            // The unsynced data is gone, as after a writeback error: a
            // later fsync that succeeds does not bring it back.
            if let Some(d) = s.files.remove(rel) {
                if let Some((lo, hi)) = d.range {
                    s.dropped_bytes += hi - lo;
                }
            }
            return Err(libc::EIO);
        }
        let Some(d) = s.files.get_mut(rel) else {
            return Ok(());
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(self.backing.join(rel))
            .map_err(|e| errno(&e))?;
        if let Some((lo, hi)) = d.range {
            file.write_all_at(&d.data[lo as usize..hi as usize], lo)
                .map_err(|e| errno(&e))?;
        }
        if d.resized || d.range.is_some() {
            file.set_len(d.data.len() as u64).map_err(|e| errno(&e))?;
        }
        file.sync_all().map_err(|e| errno(&e))?;
        d.range = None;
        d.resized = false;
        Ok(())
    }
}

impl Filesystem for FaultFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.entry(parent, name) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let Some(rel) = self.rel(ino) else {
            return reply.error(libc::ENOENT);
        };
        match self.attr(ino, &rel) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let Some(rel) = self.rel(ino) else {
            return reply.error(libc::ENOENT);
        };
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            let p = std::fs::Permissions::from_mode(mode);
            if let Err(e) = std::fs::set_permissions(self.backing.join(&rel), p) {
                return reply.error(errno(&e));
            }
        }
        if let Some(size) = size {
            let r = self.with_dirty(&rel, |d| {
                d.data.resize(size as usize, 0);
                d.resized = true;
                if let Some((lo, hi)) = d.range {
                    d.range = (lo < size).then_some((lo, hi.min(size)));
                }
            });
            if let Err(e) = r {
                return reply.error(e);
            }
        }
        match self.attr(ino, &rel) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let Some(rel) = self.rel(parent).map(|p| p.join(name)) else {
            return reply.error(libc::ENOENT);
        };
        if let Err(e) = std::fs::create_dir(self.backing.join(&rel)) {
            return reply.error(errno(&e));
        }
        match self.entry(parent, name) {
            Ok((_, a)) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let Some(rel) = self.rel(parent).map(|p| p.join(name)) else {
            return reply.error(libc::ENOENT);
        };
        if let Err(e) = std::fs::remove_file(self.backing.join(&rel)) {
            return reply.error(errno(&e));
        }
        let mut s = self.control.lock();
        s.files.remove(&rel);
        if let Some(i) = s.inos.remove(&rel) {
            s.paths.remove(&i);
        }
        reply.ok();
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let Some(rel) = self.rel(parent).map(|p| p.join(name)) else {
            return reply.error(libc::ENOENT);
        };
        match std::fs::remove_dir(self.backing.join(&rel)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        _flags: u32,
        reply: ReplyEmpty,
    ) {
        let (Some(from), Some(to)) = (
            self.rel(parent).map(|p| p.join(name)),
            self.rel(newparent).map(|p| p.join(newname)),
        ) else {
            return reply.error(libc::ENOENT);
        };
        if let Err(e) = std::fs::rename(self.backing.join(&from), self.backing.join(&to)) {
            return reply.error(errno(&e));
        }
        let mut s = self.control.lock();
        if let Some(d) = s.files.remove(&from) {
            s.files.insert(to.clone(), d);
        } else {
            s.files.remove(&to);
        }
        if let Some(i) = s.inos.remove(&to) {
            s.paths.remove(&i);
        }
        if let Some(i) = s.inos.remove(&from) {
            s.inos.insert(to.clone(), i);
            s.paths.insert(i, to);
        }
        reply.ok();
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        if self.rel(ino).is_none() {
            return reply.error(libc::ENOENT);
        }
        reply.opened(0, FOPEN_DIRECT_IO);
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let Some(rel) = self.rel(parent).map(|p| p.join(name)) else {
            return reply.error(libc::ENOENT);
        };
        use std::os::unix::fs::OpenOptionsExt;
        if let Err(e) = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .open(self.backing.join(&rel))
        {
            return reply.error(errno(&e));
        }
        match self.entry(parent, name) {
            Ok((_, a)) => reply.created(&TTL, &a, 0, 0, FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(rel) = self.rel(ino) else {
            return reply.error(libc::ENOENT);
        };
        let off = offset.max(0) as usize;
        {
            let s = self.control.lock();
            if let Some(d) = s.files.get(&rel) {
                let end = (off + size as usize).min(d.data.len());
                return reply.data(if off < end { &d.data[off..end] } else { &[] });
            }
        }
        let file = match std::fs::File::open(self.backing.join(&rel)) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], (off + got) as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return reply.error(errno(&e)),
            }
        }
        reply.data(&buf[..got]);
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Some(rel) = self.rel(ino) else {
            return reply.error(libc::ENOENT);
        };
        {
            let mut s = self.control.lock();
            if s.faults.fail_writes || s.faults.disk_full {
                s.failed_writes += 1;
                let e = if s.faults.disk_full {
                    libc::ENOSPC
                } else {
                    libc::EIO
                };
                return reply.error(e);
            }
        }
        let off = offset.max(0) as u64;
        let r = self.with_dirty(&rel, |d| {
            let end = off as usize + data.len();
            if d.data.len() < end {
                d.data.resize(end, 0);
            }
            d.data[off as usize..end].copy_from_slice(data);
            d.range = Some(match d.range {
                Some((lo, hi)) => (lo.min(off), hi.max(end as u64)),
                None => (off, end as u64),
            });
        });
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lo: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // A clean copy is not needed once closed (memory stays bounded);
        // a dirty one stays until an fsync or a power cut.
        if let Some(rel) = self.rel(ino) {
            let mut s = self.control.lock();
            if s.files
                .get(&rel)
                .is_some_and(|d| d.range.is_none() && !d.resized)
            {
                s.files.remove(&rel);
            }
        }
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        let Some(rel) = self.rel(ino) else {
            return reply.error(libc::ENOENT);
        };
        match self.sync(&rel) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: ReplyOpen) {
        reply.opened(0, 0);
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(rel) = self.rel(ino) else {
            return reply.error(libc::ENOENT);
        };
        let rd = match std::fs::read_dir(self.backing.join(&rel)) {
            Ok(rd) => rd,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut entries = vec![
            (ino, FileType::Directory, ".".into()),
            (ino, FileType::Directory, "..".into()),
        ];
        for e in rd.flatten() {
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => FileType::Directory,
                _ => FileType::RegularFile,
            };
            let name = e.file_name();
            let i = self.ino_for(&rel.join(&name));
            entries.push((i, kind, name));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096);
    }
}
