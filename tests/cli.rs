//! The binary as a person or a log collector meets it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `kubectl logs` and files get plain text: colour codes only on a terminal.
#[test]
fn text_logs_written_to_a_pipe_carry_no_colour_codes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vip-operator"))
        .args(["simulator", "--listen", "127.0.0.1:0", "--log-format", "text"])
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the simulator");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("simulator listening") => break line,
            Ok(_) => {}
            Err(e) => panic!("no start-up line: {e}"),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(!line.contains('\u{1b}'), "ANSI escape codes in {line:?}");
    assert!(line.contains("INFO"), "{line:?}");
}

/// A pairs limit out of bounds stops the simulator at start, saying why.
#[test]
fn an_out_of_bounds_pairs_limit_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_vip-operator"))
        .args(["simulator", "--listen", "127.0.0.1:0", "--max-pairs", "0"])
        .stdin(Stdio::null())
        .output()
        .expect("run the simulator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("max_pairs must be 1 to 10000, got 0"), "{stderr}");
}
