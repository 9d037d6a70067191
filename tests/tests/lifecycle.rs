//! Start-up on the built-in default, shutdown and draining.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wasp_tests::{Wasp, backend, config, eventually, free_port, http_request, wasp_bin};

fn echo_setup(args: &[&str]) -> (Wasp, SocketAddr, backend::Backend) {
    let echo = backend::echo();
    let port = free_port();
    let cfg = config::tcp_proxy(
        port,
        "          cluster: echo\n",
        "",
        &config::cluster("echo", "ROUND_ROBIN", &[(echo.addr, 1)], ""),
    );
    let wasp = Wasp::start(&cfg, args);
    (wasp, SocketAddr::from(([127, 0, 0, 1], port)), echo)
}

fn round_trip(c: &mut TcpStream, msg: &[u8]) {
    c.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

// One worker runs on the main thread beside admin; more run on threads of
// their own. Both drain the same way.
#[test]
fn sigterm_drains_open_connections_then_exits_zero() {
    sigterm_drains(1);
    sigterm_drains(3);
}

#[test]
fn drain_time_bounds_the_wait_for_idle_connections() {
    drain_time_bounds(1);
    drain_time_bounds(3);
}

fn sigterm_drains(workers: usize) {
    let workers = workers.to_string();
    let (mut wasp, addr, _echo) = echo_setup(&["--drain-time-s", "30", "--concurrency", &workers]);
    let mut open = TcpStream::connect(addr).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    round_trip(&mut open, b"before");

    wasp.terminate();
    // Admin stays up and says so; the listener stops accepting.
    eventually(Duration::from_secs(5), "DRAINING", || {
        let (status, body) = wasp.get("/ready").ok()?;
        (status == 503 && body == "DRAINING\n").then_some(())
    });
    eventually(Duration::from_secs(5), "the listener to close", || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .is_err()
            .then_some(())
    });
    // The open connection still works while draining.
    round_trip(&mut open, b"during drain");
    open.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).unwrap();
    drop(open);

    let started = Instant::now();
    let status = wasp.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exit waits for the last connection only"
    );
}

fn drain_time_bounds(workers: usize) {
    let workers = workers.to_string();
    let (mut wasp, addr, _echo) = echo_setup(&["--drain-time-s", "1", "--concurrency", &workers]);
    let mut open = TcpStream::connect(addr).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    round_trip(&mut open, b"hold");
    let started = Instant::now();
    let (status, _) = wasp.post("/quitquitquit").unwrap();
    assert_eq!(status, 200);
    let exit = wasp.wait_exit(Duration::from_secs(10));
    let took = started.elapsed();
    assert!(exit.success(), "{exit}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // The held connection is closed, not left hanging.
    let mut rest = Vec::new();
    let _ = open.read_to_end(&mut rest);
}

#[test]
fn concurrency_defaults_to_the_core_count() {
    let (wasp, _, _echo) = echo_setup(&[]);
    let cores = std::thread::available_parallelism().unwrap().get() as i64;
    assert_eq!(wasp.stat("server.concurrency"), cores);
}

#[test]
fn a_port_in_use_fails_start_up_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    // Without SO_REUSEPORT on the holder, wasp's bind fails.
    let cfg = config::tcp_proxy(
        port,
        "          cluster: c\n",
        "",
        &config::cluster("c", "ROUND_ROBIN", &[(taken.local_addr().unwrap(), 1)], ""),
    );
    let dir = wasp_tests::temp_dir("inuse");
    let path = dir.join("c.yaml");
    std::fs::write(&path, cfg).unwrap();
    let out = wasp_tests::run_wasp(&["-c", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot bind listener `proxy` to 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[test]
fn a_second_wasp_on_the_same_port_fails_instead_of_sharing_it() {
    let (first, addr, _echo) = echo_setup(&[]);
    let config = std::fs::read_to_string(&first.config_path).unwrap();
    let dir = wasp_tests::temp_dir("second");
    let path = dir.join("c.yaml");
    std::fs::write(&path, config).unwrap();
    let out = wasp_tests::run_wasp(&["-c", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot bind listener `proxy` to {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
}

/// The README's run command: no config at all. Uses the default's fixed
/// ports 10000 and 9901, so it is the only test that does.
#[test]
fn the_built_in_default_answers_curl_and_nc() {
    /// Kills the server if an assertion fails first.
    struct Guard(Option<std::process::Child>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut child = Guard(Some(
        Command::new(wasp_bin())
            .arg("--concurrency")
            .arg("1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let admin: SocketAddr = "127.0.0.1:9901".parse().unwrap();
    let ready = eventually(Duration::from_secs(10), "default admin", || {
        http_request(admin, "GET", "/ready").ok()
    });
    assert_eq!(ready, (200, "LIVE\n".to_string()));

    // What curl sees: an HTTP response.
    let (status, body) = http_request("127.0.0.1:10000".parse().unwrap(), "GET", "/").unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("wasp is running"), "{body}");
    // What nc sees: the same bytes, without having sent anything.
    let mut nc = TcpStream::connect("127.0.0.1:10000").unwrap();
    nc.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut text = String::new();
    nc.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");

    let (status, _) = http_request(admin, "POST", "/quitquitquit").unwrap();
    assert_eq!(status, 200);
    let out = child.0.take().unwrap().wait_with_output().unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("listening on 127.0.0.1:10000"), "{log}");
    assert!(
        log.contains("admin interface listening on http://127.0.0.1:9901/"),
        "{log}"
    );
}
