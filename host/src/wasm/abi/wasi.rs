//! WASI preview1, as far as filters need it: stdout/stderr into the log,
//! clocks, randomness, environment from the plugin's `vm_config`, no
//! arguments; and stubs (no files, no sockets) for the imports toolchains
//! add anyway, so such modules still link.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use super::memory::{read, write, write_u32, write_u64};
use crate::wasm::context::HostState;

const SUCCESS: i32 = 0;
const BADF: i32 = 8;
const FAULT: i32 = 21;
const INVAL: i32 = 28;
const NOENT: i32 = 44;
const NOSYS: i32 = 52;
const NOTSUP: i32 = 58;

type C<'a> = Caller<'a, HostState>;

fn ok_or_fault(r: Result<(), super::Status>) -> i32 {
    if r.is_ok() { SUCCESS } else { FAULT }
}

/// `fd_write` to stdout (info) or stderr (error): whole lines go to the
/// log, like Envoy's.
fn fd_write(c: &mut C<'_>, fd: i32, iovs: i32, n: i32, written_out: i32) -> i32 {
    if fd != 1 && fd != 2 {
        return BADF;
    }
    let mut bytes = Vec::new();
    for i in 0..n.max(0) {
        let Ok(iov) = read(c, iovs.wrapping_add(i.wrapping_mul(8)), 8) else {
            return FAULT;
        };
        let ptr = i32::from_le_bytes(iov[0..4].try_into().expect("4 bytes"));
        let len = i32::from_le_bytes(iov[4..8].try_into().expect("4 bytes"));
        match read(c, ptr, len) {
            Ok(b) => bytes.extend_from_slice(&b),
            Err(_) => return FAULT,
        }
    }
    let total = bytes.len() as u32;
    let state = c.data_mut();
    let buf = if fd == 1 {
        &mut state.stdout
    } else {
        &mut state.stderr
    };
    buf.extend_from_slice(&bytes);
    let mut lines = Vec::new();
    while let Some(end) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=end).collect();
        lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
    }
    // Keep a runaway partial line from growing without bound.
    if buf.len() > 64 * 1024 {
        let line: Vec<u8> = std::mem::take(buf);
        lines.push(String::from_utf8_lossy(&line).into_owned());
    }
    for line in lines {
        super::runtime::log(state, if fd == 1 { 2 } else { 4 }, &line);
    }
    ok_or_fault(write_u32(c, written_out, total))
}

fn environ(state: &HostState) -> Vec<Vec<u8>> {
    state
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}\0").into_bytes())
        .collect()
}

fn clock(id: i32, monotonic_base: Instant) -> Option<u64> {
    match id {
        0 => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_nanos() as u64),
        1..=3 => Some(monotonic_base.elapsed().as_nanos() as u64),
        _ => None,
    }
}

fn process_start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

pub fn add(linker: &mut Linker<HostState>) {
    for m in ["wasi_snapshot_preview1", "wasi_unstable"] {
        add_module(linker, m).expect("WASI names are unique");
    }
    linker
        .func_wrap("env", "pthread_equal", |a: i32, b: i32| i32::from(a == b))
        .expect("unique");
    linker
        .func_wrap("env", "emscripten_notify_memory_growth", |_: i32| {})
        .expect("unique");
}

fn add_module(l: &mut Linker<HostState>, m: &str) -> wasmtime::Result<()> {
    l.func_wrap(
        m,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, n: i32, out: i32| fd_write(&mut c, fd, iovs, n, out),
    )?;
    l.func_wrap(m, "fd_read", |_: i32, _: i32, _: i32, _: i32| NOSYS)?;
    l.func_wrap(m, "fd_seek", |_: i32, _: i64, _: i32, _: i32| SUCCESS)?;
    l.func_wrap(m, "fd_close", |_: i32| SUCCESS)?;
    l.func_wrap(m, "fd_fdstat_get", |mut c: C<'_>, fd: i32, out: i32| {
        if fd != 1 && fd != 2 {
            return BADF;
        }
        // filetype character device, no flags, rights: fd_write (bit 6).
        let mut stat = [0u8; 24];
        stat[0] = 2;
        stat[8..16].copy_from_slice(&(1u64 << 6).to_le_bytes());
        ok_or_fault(write(&mut c, out, &stat))
    })?;
    l.func_wrap(m, "fd_fdstat_set_flags", |_: i32, _: i32| NOSYS)?;
    l.func_wrap(m, "fd_fdstat_set_rights", |_: i32, _: i64, _: i64| NOSYS)?;
    l.func_wrap(m, "fd_prestat_get", |_: i32, _: i32| BADF)?;
    l.func_wrap(m, "fd_prestat_dir_name", |_: i32, _: i32, _: i32| BADF)?;
    l.func_wrap(m, "fd_filestat_get", |_: i32, _: i32| BADF)?;
    l.func_wrap(m, "fd_advise", |_: i32, _: i64, _: i64, _: i32| NOSYS)?;
    l.func_wrap(m, "fd_allocate", |_: i32, _: i64, _: i64| NOSYS)?;
    l.func_wrap(m, "fd_datasync", |_: i32| NOSYS)?;
    l.func_wrap(m, "fd_sync", |_: i32| NOSYS)?;
    l.func_wrap(m, "fd_tell", |_: i32, _: i32| NOSYS)?;
    l.func_wrap(m, "fd_filestat_set_size", |_: i32, _: i64| NOSYS)?;
    l.func_wrap(
        m,
        "fd_filestat_set_times",
        |_: i32, _: i64, _: i64, _: i32| NOSYS,
    )?;
    l.func_wrap(m, "fd_pread", |_: i32, _: i32, _: i32, _: i64, _: i32| {
        NOSYS
    })?;
    l.func_wrap(m, "fd_pwrite", |_: i32, _: i32, _: i32, _: i64, _: i32| {
        NOSYS
    })?;
    l.func_wrap(m, "fd_readdir", |_: i32, _: i32, _: i32, _: i64, _: i32| {
        NOSYS
    })?;
    l.func_wrap(m, "fd_renumber", |_: i32, _: i32| NOSYS)?;
    l.func_wrap(
        m,
        "path_open",
        |_: i32, _: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32, _: i32| NOENT,
    )?;
    l.func_wrap(m, "path_create_directory", |_: i32, _: i32, _: i32| NOSYS)?;
    l.func_wrap(m, "path_remove_directory", |_: i32, _: i32, _: i32| NOSYS)?;
    l.func_wrap(m, "path_unlink_file", |_: i32, _: i32, _: i32| NOSYS)?;
    l.func_wrap(
        m,
        "path_filestat_get",
        |_: i32, _: i32, _: i32, _: i32, _: i32| NOENT,
    )?;
    l.func_wrap(
        m,
        "path_filestat_set_times",
        |_: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32| NOSYS,
    )?;
    l.func_wrap(
        m,
        "path_link",
        |_: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| NOSYS,
    )?;
    l.func_wrap(
        m,
        "path_readlink",
        |_: i32, _: i32, _: i32, _: i32, _: i32, _: i32| NOSYS,
    )?;
    l.func_wrap(
        m,
        "path_rename",
        |_: i32, _: i32, _: i32, _: i32, _: i32, _: i32| NOSYS,
    )?;
    l.func_wrap(
        m,
        "path_symlink",
        |_: i32, _: i32, _: i32, _: i32, _: i32| NOSYS,
    )?;
    l.func_wrap(m, "sock_accept", |_: i32, _: i32, _: i32| NOSYS)?;
    l.func_wrap(
        m,
        "sock_recv",
        |_: i32, _: i32, _: i32, _: i32, _: i32, _: i32| NOSYS,
    )?;
    l.func_wrap(m, "sock_send", |_: i32, _: i32, _: i32, _: i32, _: i32| {
        NOSYS
    })?;
    l.func_wrap(m, "sock_shutdown", |_: i32, _: i32| NOSYS)?;
    l.func_wrap(m, "proc_raise", |_: i32| NOSYS)?;
    l.func_wrap(m, "sched_yield", || SUCCESS)?;
    l.func_wrap(
        m,
        "poll_oneoff",
        |mut c: C<'_>, _in: i32, _out: i32, _n: i32, nevents: i32| {
            // As Envoy: no events, success (Go's runtime insists on success).
            ok_or_fault(write_u32(&mut c, nevents, 0))
        },
    )?;
    l.func_wrap(
        m,
        "proc_exit",
        |c: C<'_>, code: i32| -> wasmtime::Result<()> {
            super::runtime::log(c.data(), 4, &format!("proc_exit({code}) called"));
            Err(wasmtime::Error::msg(format!(
                "the module called proc_exit({code})"
            )))
        },
    )?;
    l.func_wrap(m, "args_sizes_get", |mut c: C<'_>, argc: i32, size: i32| {
        ok_or_fault(write_u32(&mut c, argc, 0).and_then(|_| write_u32(&mut c, size, 0)))
    })?;
    l.func_wrap(m, "args_get", |_: i32, _: i32| SUCCESS)?;
    l.func_wrap(
        m,
        "environ_sizes_get",
        |mut c: C<'_>, count: i32, size: i32| {
            let env = environ(c.data());
            let total: usize = env.iter().map(Vec::len).sum();
            ok_or_fault(
                write_u32(&mut c, count, env.len() as u32)
                    .and_then(|_| write_u32(&mut c, size, total as u32)),
            )
        },
    )?;
    l.func_wrap(m, "environ_get", |mut c: C<'_>, array: i32, buf: i32| {
        let env = environ(c.data());
        let mut at = buf as u32;
        for (i, entry) in env.iter().enumerate() {
            let r = write_u32(&mut c, array.wrapping_add(i as i32 * 4), at)
                .and_then(|_| write(&mut c, at as i32, entry));
            if r.is_err() {
                return FAULT;
            }
            at = at.wrapping_add(entry.len() as u32);
        }
        SUCCESS
    })?;
    l.func_wrap(
        m,
        "clock_time_get",
        |mut c: C<'_>, id: i32, _precision: i64, out: i32| match clock(id, process_start()) {
            Some(t) => ok_or_fault(write_u64(&mut c, out, t)),
            None => NOTSUP,
        },
    )?;
    l.func_wrap(m, "clock_res_get", |mut c: C<'_>, id: i32, out: i32| {
        if !(0..=3).contains(&id) {
            return NOTSUP;
        }
        ok_or_fault(write_u64(&mut c, out, 1_000))
    })?;
    l.func_wrap(m, "random_get", |mut c: C<'_>, ptr: i32, len: i32| {
        let len = len as u32 as usize;
        if len > 64 * 1024 {
            return INVAL;
        }
        let bytes: Vec<u8> = (0..len).map(|_| fastrand::u8(..)).collect();
        ok_or_fault(write(&mut c, ptr, &bytes))
    })?;
    Ok(())
}
