//! Vault benchmark: prints the figures recorded in docs/PERFORMANCE.md.
//!
//! `cargo run --release -p latchkey-e2e --bin vault-bench [-- RECORDS]`
//!
//! - writes/s: `Vault::put`, each one a durable (fsync'd) redb commit;
//! - reads/s on the decrypt path (`reveal`: database read + age decrypt +
//!   envelope check) and on the cached path (`reveal_cached`);
//! - open time of a vault with RECORDS entries (open + schema check/migrate +
//!   unwrap of the data key + listing all metadata);
//! - resident memory of this process holding every record's plaintext in the
//!   cache.

use latchkey_core::secrecy::SecretString;
use latchkey_core::store::Store;
use latchkey_core::vault::{Kind, MasterKeySource, NewRecord, Vault};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let records: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let source = MasterKeySource::KeyFile {
        path: dir.path().join("master.key"),
    };
    let rss_start = rss_kib();

    // Writes: each put is its own durable transaction.
    let t = Instant::now();
    {
        let vault = Vault::new(Store::open(dir.path(), "bench")?);
        vault.open_with(&source)?;
        for i in 0..records {
            let rec = NewRecord {
                name: format!("key-{i:05}"),
                kind: Kind::ApiKey,
                provider: Some("openai".into()),
                labels: BTreeMap::new(),
            };
            vault.put(
                &rec,
                &SecretString::from(format!("sk-bench-{i:05}-{}", "x".repeat(40))),
                false,
            )?;
        }
    }
    let write_time = t.elapsed();

    // Open a vault of `records` entries (schema is current: the migration
    // step is the version check only).
    let t = Instant::now();
    let vault = Vault::new(Store::open(dir.path(), "bench")?);
    vault.open_with(&source)?;
    let listed = vault.list()?.len();
    let open_time = t.elapsed();
    assert_eq!(listed, records);

    // Decrypt path.
    let reads = 20_000.min(records * 4);
    let t = Instant::now();
    for i in 0..reads {
        let _ = vault.reveal(&format!("key-{:05}", (i * 7919) % records))?;
    }
    let decrypt_time = t.elapsed();

    // Cached path: warm every entry, then read.
    for i in 0..records {
        let _ = vault.reveal_cached(&format!("key-{i:05}"))?;
    }
    let rss_holding = rss_kib();
    let cached_reads = 1_000_000;
    let names: Vec<String> = (0..records).map(|i| format!("key-{i:05}")).collect();
    let t = Instant::now();
    for i in 0..cached_reads {
        let _ = vault.reveal_cached(&names[(i * 7919) % records])?;
    }
    let cached_time = t.elapsed();

    println!("vault benchmark, {records} records");
    println!(
        "writes (durable, one commit each): {:>10.0} /s  ({records} in {:.2?})",
        per_sec(records, write_time),
        write_time
    );
    println!(
        "reads, decrypt path:               {:>10.0} /s  ({reads} in {:.2?})",
        per_sec(reads, decrypt_time),
        decrypt_time
    );
    println!(
        "reads, cached path:                {:>10.0} /s  ({cached_reads} in {:.2?})",
        per_sec(cached_reads, cached_time),
        cached_time
    );
    println!("open + migrate + unseal + list:    {open_time:>10.2?}");
    println!(
        "resident memory holding all {records} records: {:.1} MiB (process start: {:.1} MiB)",
        rss_holding as f64 / 1024.0,
        rss_start as f64 / 1024.0
    );
    Ok(())
}
