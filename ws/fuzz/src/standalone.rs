//! A fuzz driver that needs only a stable toolchain: replays corpus files, then runs a bounded
//! loop of mutated seeds and random inputs. Not coverage guided (that is what the `libfuzzer`
//! feature is for), but it builds and runs everywhere CI does.
//!
//! Usage: `<target> [FILE|DIR]... [--iterations N] [--seconds S] [--seed X] [--dump-seeds DIR]`
//! (`--dump-seeds` writes the built-in seeds into DIR, e.g. to start a libFuzzer corpus, and exits).
//! A failing input is written to `crash-<target>-<hash>` in the current directory and the process
//! exits with status 1.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: small, deterministic for a given `--seed`.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to WebSocket and HTTP parsers.
const INTERESTING: &[u8] = &[0x00, 0x7D, 0x7E, 0x7F, 0x80, 0xFF, 0x81, 0x88, 0x89, 0x8A, 0xED, 0xF4, b'\r', b'\n', b':', b','];

fn mutate(base: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(8) {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below(len - at);
                v.drain(at..at + n);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let dup = v[at..at + n].to_vec();
                let to = rng.below(len + 1);
                v.splice(to..to, dup);
            }
            5 if !other.is_empty() => {
                let at = rng.below(len + 1);
                let from = rng.below(other.len());
                let n = 1 + rng.below(other.len() - from);
                v.splice(at..at, other[from..from + n].iter().copied());
            }
            6 if len > 0 => v.truncate(rng.below(len)),
            _ => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
        }
    }
    v
}

fn files(path: &Path, into: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| e.path()).collect();
        entries.sort();
        for e in entries {
            files(&e, into);
        }
    } else {
        into.push(path.to_path_buf());
    }
}

fn run_one(name: &str, target: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
        let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
        let file = format!("crash-{name}-{hash:016x}");
        let _ = std::fs::write(&file, input);
        eprintln!("{name}: FAILED on a {}-byte input, saved to {file}", input.len());
        std::process::exit(1);
    }
}

/// Entry point of a standalone target binary.
pub fn main(name: &str, target: fn(&[u8]), seeds: fn() -> Vec<Vec<u8>>) {
    let mut iterations: u64 = 1_000_000;
    let mut seconds: u64 = 60;
    let mut seed: u64 = 0x5EED_1234_ABCD_0001;
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| -> u64 {
            args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("{name}: {flag} needs a number");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--iterations" => iterations = value("--iterations"),
            "--seconds" => seconds = value("--seconds"),
            "--seed" => seed = value("--seed").max(1),
            "--dump-seeds" => {
                let dir = PathBuf::from(args.next().unwrap_or_else(|| "corpus".into()));
                std::fs::create_dir_all(&dir).expect("create the seed directory");
                for (i, s) in seeds().iter().enumerate() {
                    std::fs::write(dir.join(format!("seed-{i}")), s).expect("write a seed");
                }
                return;
            }
            "-h" | "--help" => {
                println!("usage: {name} [FILE|DIR]... [--iterations N (1000000)] [--seconds S (60)] [--seed X] [--dump-seeds DIR]");
                return;
            }
            _ => files(Path::new(&arg), &mut paths),
        }
    }
    let start = Instant::now();
    let mut corpus = seeds();
    for p in &paths {
        match std::fs::read(p) {
            Ok(bytes) => corpus.push(bytes),
            Err(e) => eprintln!("{name}: skipping {}: {e}", p.display()),
        }
    }
    for input in &corpus {
        run_one(name, target, input);
    }
    let mut rng = Rng(seed);
    let deadline = start + Duration::from_secs(seconds);
    let mut ran = 0;
    let mut bytes = 0usize;
    while ran < iterations && Instant::now() < deadline {
        let input = if rng.below(16) == 0 {
            (0..rng.below(512)).map(|_| rng.next() as u8).collect()
        } else {
            let base = &corpus[rng.below(corpus.len())];
            let other = &corpus[rng.below(corpus.len())];
            mutate(base, other, &mut rng)
        };
        run_one(name, target, &input);
        ran += 1;
        bytes += input.len();
        if rng.below(64) == 0 && input.len() < 1 << 16 {
            corpus.push(input); // keep some mutants to mutate further
        }
    }
    println!(
        "{name}: ok, {} corpus inputs replayed, {ran} mutated inputs ({bytes} bytes) in {:.1}s",
        seeds().len() + paths.len(),
        start.elapsed().as_secs_f64()
    );
}
