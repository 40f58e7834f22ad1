//! The raw Argon2id ceiling of password sign-in.
//!
//! `hash_rate --seconds S [--threads N]` checks a right password against its hash on N threads
//! (default: the machine's cores, as many as sign-in hashes at once) for S seconds, each thread
//! with its own working memory, through the function and parameters sign-in uses
//! (`portcullis_core::account::verify_password`), and prints `checks_per_s=<rate>`.
//! `bench/signin.sh` sets sign-ins per second over HTTP beside it.

use std::time::{Duration, Instant};

use portcullis_core::OsRandom;
use portcullis_core::account::{HashMemory, hash_password, verify_password};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut seconds = 10u64;
    let mut threads = std::thread::available_parallelism().map_or(2, usize::from);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().ok_or("--seconds needs a value")?.parse()?,
            "--threads" => threads = args.next().ok_or("--threads needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let password = "correct horse battery staple";
    let hash = hash_password(password, &OsRandom, &mut HashMemory::new());
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let checks: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut memory = HashMemory::new();
                    let mut done = 0u64;
                    while Instant::now() < until {
                        assert!(verify_password(&hash, password, &mut memory));
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap_or(0))
            .sum()
    });
    let elapsed = started.elapsed().as_secs_f64();
    println!("checks_per_s={:.1}", checks as f64 / elapsed);
    Ok(())
}
