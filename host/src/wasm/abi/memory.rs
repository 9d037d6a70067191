//! Reading and writing the guest's linear memory. Every pointer and length
//! comes from the guest and is checked; a bad one is a status the guest
//! sees (`INVALID_MEMORY_ACCESS`), never a host panic.

use wasmtime::{AsContext, AsContextMut, Caller};

use super::Status;
use crate::wasm::context::HostState;

pub type Ctx<'a> = Caller<'a, HostState>;

fn memory(caller: &Ctx<'_>) -> Result<wasmtime::Memory, Status> {
    caller.data().memory.ok_or(Status::InvalidMemoryAccess)
}

fn range(ptr: i32, len: i32, size: usize) -> Result<std::ops::Range<usize>, Status> {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let end = ptr.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    if end > size {
        return Err(Status::InvalidMemoryAccess);
    }
    Ok(ptr..end)
}

/// A copy of `len` guest bytes at `ptr`.
pub fn read(caller: &Ctx<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let mem = memory(caller)?;
    let data = mem.data(caller.as_context());
    Ok(data[range(ptr, len, data.len())?].to_vec())
}

/// Guest bytes as a string (lossy: names and values that are not UTF-8 are
/// rare and not worth a failure).
pub fn read_string(caller: &Ctx<'_>, ptr: i32, len: i32) -> Result<String, Status> {
    let bytes = read(caller, ptr, len)?;
    Ok(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into()))
}

/// Writes `bytes` at `ptr`.
pub fn write(caller: &mut Ctx<'_>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let mem = memory(caller)?;
    let data = mem.data_mut(caller.as_context_mut());
    let r = range(ptr, bytes.len() as i32, data.len())?;
    data[r].copy_from_slice(bytes);
    Ok(())
}

pub fn write_u32(caller: &mut Ctx<'_>, ptr: i32, v: u32) -> Result<(), Status> {
    write(caller, ptr, &v.to_le_bytes())
}

pub fn write_u64(caller: &mut Ctx<'_>, ptr: i32, v: u64) -> Result<(), Status> {
    write(caller, ptr, &v.to_le_bytes())
}

/// Hands `bytes` to the guest: allocates with its allocator, copies, and
/// writes the pointer and length to `ptr_out` / `len_out`. Empty data is
/// pointer 0, length 0 (as Envoy). A trap inside the allocator is passed
/// on as a trap.
pub fn copy_out(
    caller: &mut Ctx<'_>,
    bytes: &[u8],
    ptr_out: i32,
    len_out: i32,
) -> wasmtime::Result<Status> {
    // Check the out-pointers before allocating anything.
    let size = memory(caller)
        .map(|m| m.data_size(caller.as_context()))
        .unwrap_or(0);
    if range(ptr_out, 4, size).is_err() || range(len_out, 4, size).is_err() {
        return Ok(Status::InvalidMemoryAccess);
    }
    if bytes.is_empty() {
        return Ok(status(
            write_u32(caller, ptr_out, 0).and_then(|_| write_u32(caller, len_out, 0)),
        ));
    }
    let Some(alloc) = caller.data().alloc.clone() else {
        return Ok(Status::InvalidMemoryAccess);
    };
    let ptr = alloc.call(&mut *caller, bytes.len() as u32)?;
    if ptr == 0 {
        return Ok(Status::InvalidMemoryAccess);
    }
    Ok(status(
        write(caller, ptr as i32, bytes)
            .and_then(|_| write_u32(caller, ptr_out, ptr))
            .and_then(|_| write_u32(caller, len_out, bytes.len() as u32)),
    ))
}

/// `Ok(())` as `Status::Ok`, an error as itself.
pub fn status(r: Result<(), Status>) -> Status {
    match r {
        Ok(()) => Status::Ok,
        Err(s) => s,
    }
}
