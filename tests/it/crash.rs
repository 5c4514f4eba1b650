//! Crash safety: `kill -9` in the middle of a stream of acknowledged vault
//! writes, many times over. Every write the process acknowledged must be
//! there afterwards, intact, and the database must open cleanly.

use latchkey_e2e::TestDir;
use rand::Rng;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ROUNDS: usize = 25;
const PER_ROUND: usize = 400;

#[test]
fn kill_9_during_writes_loses_no_acknowledged_write() {
    let d = TestDir::new();
    d.ok(&["vault", "put", "seed"], b"seed-value");
    let mut rng = rand::thread_rng();
    let mut acked_all: Vec<String> = Vec::new();
    let mut killed_mid_stream = 0;

    for round in 0..ROUNDS {
        let input: String = (0..PER_ROUND)
            .map(|i| format!("R{round}_{i}=value-{round}-{i}\n"))
            .collect();
        let mut child = d
            .cmd(&["vault", "import"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write input");
        drop(stdin);
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(name) = line.strip_prefix("stored ") {
                    let _ = tx.send(name.to_string());
                }
            }
        });
        // Kill after a random number of acknowledgements (1..PER_ROUND),
        // so the kill lands anywhere in the stream, commits included.
        let kill_after = rng.gen_range(1..PER_ROUND);
        let mut acked = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.len() < kill_after && Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(name) => acked.push(name),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if child.try_wait().expect("wait").is_some() {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = child.kill(); // SIGKILL
        let status = child.wait().expect("wait");
        let _ = reader.join();
        // Acknowledgements already in the pipe count too: they were printed
        // after their commit returned.
        acked.extend(rx.try_iter());
        if !status.success() && acked.len() < PER_ROUND {
            killed_mid_stream += 1;
        }

        // The database opens cleanly and holds every acknowledged write.
        let out = d.ok(&["vault", "list", "--json"], b"");
        let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        let names: std::collections::HashSet<&str> = list
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|i| i["name"].as_str())
            .collect();
        for name in acked_all.iter().chain(acked.iter()) {
            assert!(
                names.contains(name.as_str()),
                "round {round}: acknowledged `{name}` is missing"
            );
        }
        if let Some(last) = acked.last() {
            let (r, i) = last[1..].split_once('_').expect("name");
            let out = d.ok(&["vault", "get", last, "--reveal"], b"");
            assert_eq!(
                out.stdout,
                format!("value-{r}-{i}"),
                "round {round}: `{last}` damaged"
            );
        }
        acked_all.extend(acked);
    }
    // Every record decrypts and belongs to itself after all the kills.
    d.ok(&["vault", "verify"], b"");
    assert_eq!(
        d.ok(&["vault", "get", "seed", "--reveal"], b"").stdout,
        "seed-value"
    );
    assert!(
        killed_mid_stream >= ROUNDS / 2,
        "only {killed_mid_stream} of {ROUNDS} kills landed mid-stream; the test proved little"
    );
    eprintln!(
        "{killed_mid_stream}/{ROUNDS} kills mid-stream, {} acknowledged writes verified",
        acked_all.len()
    );
}
