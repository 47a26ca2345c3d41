//! The image server's block caches: decompressed blocks by position,
//! bounded, least recently used out first, shared between the answering
//! thread and the read-ahead thread without decompressing a block twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Decompressed blocks by position, shared by the server's answering thread
/// and its read-ahead thread (see [`super::readahead`]), each with an
/// [`Archive`] of its own: one for data and fragment blocks, one for
/// metadata blocks. A block one thread is decompressing is waited for by the
/// other, never done twice.
pub struct Cache<V> {
    state: Mutex<Entries<V>>,
    loaded: Condvar,
}

/// The data blocks' cache.
pub type BlockCache = Cache<Vec<u8>>;

/// A block being decompressed by this thread; dropped when done.
struct Loading<'a, V> {
    cache: &'a Cache<V>,
    pos: u64,
}

impl<V> Drop for Loading<'_, V> {
    fn drop(&mut self) {
        self.cache.lock().loading.remove(&self.pos);
        self.cache.loaded.notify_all();
    }
}

struct Entries<V> {
    /// Each block (moved in, never copied) with when it was last used (a
    /// least-recently-used cache).
    map: HashMap<u64, (Arc<V>, u64)>,
    capacity: usize,
    clock: u64,
    /// Blocks being decompressed now.
    loading: HashSet<u64>,
}

impl<V> Cache<V> {
    pub(super) fn new(capacity: usize) -> Cache<V> {
        Cache { state: Mutex::new(Entries { map: HashMap::new(), capacity, clock: 0, loading: HashSet::new() }), loaded: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Entries<V>> {
        // A panic while holding the lock leaves the map consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The block at `pos`: cached, or waited for while the other thread
    /// decompresses it, or made with `load` (outside the lock).
    pub(super) fn get_or_load<E>(&self, pos: u64, load: impl FnOnce() -> Result<V, E>) -> Result<Arc<V>, E> {
        let mut s = self.lock();
        loop {
            s.clock += 1;
            let clock = s.clock;
            if let Some((b, used)) = s.map.get_mut(&pos) {
                *used = clock;
                return Ok(b.clone());
            }
            if !s.loading.contains(&pos) {
                break;
            }
            s = self.loaded.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.loading.insert(pos);
        drop(s);
        // Ends the wait of the other thread also when `load` fails.
        let _loading = Loading { cache: self, pos };
        let block = Arc::new(load()?);
        let mut s = self.lock();
        if s.map.len() >= s.capacity {
            if let Some(old) = s.map.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| *k) {
                s.map.remove(&old);
            }
        }
        s.clock += 1;
        let clock = s.clock;
        s.map.insert(pos, (block.clone(), clock));
        Ok(block)
    }

    /// How many blocks are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// The most blocks kept.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }
}
