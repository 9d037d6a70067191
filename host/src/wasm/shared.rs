//! What plugins share across workers: the key-value store and the queues
//! (both scoped by vm_id, as Envoy's). Guarded by mutexes that only
//! plugins using these hostcalls ever touch.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An event for a VM from another worker.
#[derive(Debug)]
pub enum VmEvent {
    QueueReady { root_id: u32, queue_id: u32 },
}

#[derive(Default)]
struct Data {
    map: Mutex<HashMap<(String, String), (Bytes, u32)>>,
    next_cas: AtomicU32,
}

fn data() -> &'static Data {
    static DATA: OnceLock<Data> = OnceLock::new();
    DATA.get_or_init(Data::default)
}

/// The value and CAS of `key`.
pub fn get(vm_id: &str, key: &str) -> Option<(Bytes, u32)> {
    lock(&data().map)
        .get(&(vm_id.to_string(), key.to_string()))
        .cloned()
}

/// Sets `key`; with a non-zero `cas` only if it is still the current one.
/// False on a CAS mismatch.
pub fn set(vm_id: &str, key: &str, value: Bytes, cas: u32) -> bool {
    let d = data();
    let mut map = lock(&d.map);
    let entry = map.entry((vm_id.to_string(), key.to_string()));
    let next = || {
        d.next_cas
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .max(1)
    };
    match entry {
        std::collections::hash_map::Entry::Occupied(mut e) => {
            if cas != 0 && e.get().1 != cas {
                return false;
            }
            *e.get_mut() = (value, next());
        }
        std::collections::hash_map::Entry::Vacant(e) => {
            if cas != 0 {
                return false;
            }
            e.insert((value, next()));
        }
    }
    true
}

struct Queue {
    items: VecDeque<Bytes>,
    owner: Option<(UnboundedSender<VmEvent>, u32)>,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, String), u32>,
    queues: Vec<Queue>,
}

fn queues() -> &'static Mutex<Queues> {
    static QUEUES: OnceLock<Mutex<Queues>> = OnceLock::new();
    QUEUES.get_or_init(Default::default)
}

/// Registers (or re-opens) queue `name`; readiness goes to `root_id` on the
/// VM behind `events`, the first registrant's.
pub fn register_queue(
    vm_id: &str,
    name: &str,
    events: UnboundedSender<VmEvent>,
    root_id: u32,
) -> u32 {
    let mut q = lock(queues());
    let key = (vm_id.to_string(), name.to_string());
    if let Some(&id) = q.by_name.get(&key) {
        let queue = &mut q.queues[id as usize - 1];
        // A registrant whose VM is gone (rebuilt) hands the queue on.
        if queue.owner.as_ref().is_none_or(|(tx, _)| tx.is_closed()) {
            queue.owner = Some((events, root_id));
        }
        return id;
    }
    q.queues.push(Queue {
        items: VecDeque::new(),
        owner: Some((events, root_id)),
    });
    let id = q.queues.len() as u32;
    q.by_name.insert(key, id);
    id
}

pub fn resolve_queue(vm_id: &str, name: &str) -> Option<u32> {
    lock(queues())
        .by_name
        .get(&(vm_id.to_string(), name.to_string()))
        .copied()
}

/// Appends to a queue and tells its owner; false if there is no such queue.
pub fn enqueue(queue_id: u32, value: Bytes) -> bool {
    let mut q = lock(queues());
    let Some(queue) = q.queues.get_mut((queue_id as usize).wrapping_sub(1)) else {
        return false;
    };
    queue.items.push_back(value);
    if let Some((tx, root_id)) = &queue.owner {
        let _ = tx.send(VmEvent::QueueReady {
            root_id: *root_id,
            queue_id,
        });
    }
    true
}

/// The oldest item: `None` if there is no such queue, `Some(None)` if it
/// is empty.
pub fn dequeue(queue_id: u32) -> Option<Option<Bytes>> {
    let mut q = lock(queues());
    let queue = q.queues.get_mut((queue_id as usize).wrapping_sub(1))?;
    Some(queue.items.pop_front())
}
