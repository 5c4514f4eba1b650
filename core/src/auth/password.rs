//! Passwords: what we accept ([`PasswordPolicy`]) and how we store them
//! ([`PasswordHasher`]).
//!
//! **Policy** follows NIST SP 800-63B §5.1.1.2: at least
//! [`MIN_PASSWORD_CHARS`] and at most [`MAX_PASSWORD_CHARS`] characters
//! (Unicode scalar values, not bytes), not one of the 10,000 most common
//! passwords, not the username — and *no* composition rules ("one digit, one
//! symbol…"), which make passwords harder to remember without making them
//! harder to guess. Each refusal names the rule that failed so the user knows
//! what to change.
//!
//! **Storage** is argon2id in the PHC string format
//! (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), with parameters at or above
//! OWASP's recommendation (see [`Argon2Params`]). Verification is
//! constant-time (argon2's own output comparison), and
//! [`PasswordHasher::verify_dummy`] lets a login for an unknown username
//! spend the same time as one for a real account, so timing does not reveal
//! which usernames exist.
//!
//! **Hashing and verifying are deliberately slow** (tens of milliseconds of
//! CPU and ~19 MiB of memory each with the defaults). Async callers must run
//! them on the blocking pool — `tokio::task::spawn_blocking` — never directly
//! on a runtime worker thread. Because each costs that much memory, they
//! run on a fixed pool of [`PasswordHasher::concurrency`] threads (one per
//! CPU) and further callers wait their turn, so a burst of sign-ins from
//! strangers queues instead of growing the process by 19 MiB a request.
//! Each of those threads allocates its argon2 memory once and reuses it
//! (`Argon2::hash_password_into_with_memory`): a 19 MiB area freed after
//! every computation is what let the allocator's heaps grow by hundreds of
//! MiB under a burst (see `Memory`).
//!
//! The common-password list is the top 10,000 of zxcvbn 4.4.2's `passwords`
//! frequency list (MIT; see `COMMON-PASSWORDS-LICENSE` next to this file).

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use argon2::password_hash::Error as PhcError;
use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::RngCore as _;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret as _, SecretString};
use thiserror::Error;
use zeroize::{Zeroize as _, Zeroizing};

/// Fewest characters a password may have (NIST SP 800-63B asks for at
/// least 8; 15 for single-factor. We require 12 on top of mandatory TOTP).
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Most characters a password may have. NIST asks verifiers to accept at
/// least 64; 256 leaves room for passphrases while bounding the work an
/// unauthenticated request can cause.
pub const MAX_PASSWORD_CHARS: usize = 256;

/// How many entries the bundled common-password list holds.
pub const COMMON_PASSWORDS_COUNT: usize = 10_000;

/// The bundled list: one lower-case password per line, most common first.
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

/// Why a password was refused or could not be hashed or checked.
///
/// The policy variants ([`PasswordError::is_policy_violation`]) are meant to
/// be shown to the user as they are; the others are server-side faults.
#[derive(Debug, Error)]
pub enum PasswordError {
    /// Fewer than [`MIN_PASSWORD_CHARS`] characters.
    #[error("the password is too short: it has {actual} characters and needs at least {min}")]
    TooShort {
        /// Characters in the submitted password.
        actual: usize,
        /// The minimum.
        min: usize,
    },
    /// More than [`MAX_PASSWORD_CHARS`] characters.
    #[error("the password is too long: it has {actual} characters and may have at most {max}")]
    TooLong {
        /// Characters in the submitted password.
        actual: usize,
        /// The maximum.
        max: usize,
    },
    /// The password equals the username, ignoring case.
    #[error("the password must not be the same as the username")]
    SameAsUsername,
    /// The password is on the bundled list, ignoring case.
    #[error(
        "the password is one of the 10,000 most common passwords, which attackers try first; \
         choose another (a few unrelated words make a good one)"
    )]
    Common,
    /// The configured argon2 parameters are not valid argon2 parameters or
    /// are unreasonably large.
    #[error("invalid argon2 parameters: {0}")]
    InvalidParams(String),
    /// The configured argon2 parameters are weaker than OWASP's minimum.
    #[error(
        "argon2 parameters m={memory_kib} KiB, t={iterations} are weaker than OWASP's minimum \
         (m >= 7168 KiB and m x t >= 35840, e.g. m=19456, t=2)"
    )]
    WeakParams {
        /// Configured memory cost in KiB.
        memory_kib: u32,
        /// Configured number of passes.
        iterations: u32,
    },
    /// A stored hash could not be parsed or names an unsupported algorithm.
    #[error("the stored password hash is malformed or uses an unsupported algorithm")]
    MalformedHash,
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
    /// argon2 itself failed.
    #[error("password hashing failed: {0}")]
    Hashing(argon2::password_hash::Error),
    /// The thread running argon2 stopped before answering.
    #[error("password hashing failed: its worker thread stopped")]
    Worker,
}

impl PasswordError {
    /// True for the refusals a user can fix by choosing another password
    /// (map to 400/422); false for server-side faults (map to 500).
    #[must_use]
    pub fn is_policy_violation(&self) -> bool {
        matches!(
            self,
            Self::TooShort { .. } | Self::TooLong { .. } | Self::SameAsUsername | Self::Common
        )
    }
}

/// The password rules of NIST SP 800-63B. Build one at startup and share it
/// (it holds the common-password set, ~10,000 entries).
pub struct PasswordPolicy {
    common: HashSet<&'static str>,
}

impl fmt::Debug for PasswordPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordPolicy")
            .field("min_chars", &MIN_PASSWORD_CHARS)
            .field("max_chars", &MAX_PASSWORD_CHARS)
            .field("common_passwords", &self.common.len())
            .finish()
    }
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl PasswordPolicy {
    /// Loads the bundled common-password list.
    #[must_use]
    pub fn new() -> Self {
        let common = COMMON_PASSWORDS
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        Self { common }
    }

    /// Checks a new password for `username`, naming the first rule it
    /// breaks: length, then sameness with the username, then the common list.
    ///
    /// # Errors
    /// [`PasswordError::TooShort`], [`PasswordError::TooLong`],
    /// [`PasswordError::SameAsUsername`] or [`PasswordError::Common`].
    pub fn check(&self, password: &str, username: &str) -> Result<(), PasswordError> {
        let chars = password.chars().count();
        if chars < MIN_PASSWORD_CHARS {
            return Err(PasswordError::TooShort {
                actual: chars,
                min: MIN_PASSWORD_CHARS,
            });
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(PasswordError::TooLong {
                actual: chars,
                max: MAX_PASSWORD_CHARS,
            });
        }
        let lower = Zeroizing::new(password.to_lowercase());
        if *lower == username.to_lowercase() {
            return Err(PasswordError::SameAsUsername);
        }
        if self.common.contains(lower.as_str()) {
            return Err(PasswordError::Common);
        }
        Ok(())
    }
}

/// argon2id cost parameters.
///
/// The default, m = 19456 KiB (19 MiB), t = 2, p = 1, is the first of
/// OWASP's Password Storage Cheat Sheet configurations (and argon2's own
/// default). [`PasswordHasher::new`] refuses anything weaker than OWASP's
/// set of equivalent options (m ≥ 7168 KiB and m × t ≥ 35840).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes over memory.
    pub iterations: u32,
    /// Lanes. A deployment choice rather than a strength: total work is set
    /// by memory and passes.
    pub parallelism: u32,
}

impl Default for Argon2Params {
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl Argon2Params {
    /// OWASP's weakest memory option (7 MiB, with t = 5).
    const OWASP_MIN_MEMORY_KIB: u32 = 7_168;
    /// OWASP's options trade memory for passes at roughly constant m × t;
    /// the smallest product among them (7168 × 5).
    const OWASP_MIN_WORK: u64 = 35_840;
    /// Guard against configuration typos that would exhaust memory on the
    /// first login: 2 GiB.
    const MAX_MEMORY_KIB: u32 = 2 * 1024 * 1024;

    fn to_argon2(self) -> Result<Params, PasswordError> {
        if self.memory_kib < Self::OWASP_MIN_MEMORY_KIB
            || u64::from(self.memory_kib) * u64::from(self.iterations) < Self::OWASP_MIN_WORK
        {
            return Err(PasswordError::WeakParams {
                memory_kib: self.memory_kib,
                iterations: self.iterations,
            });
        }
        if self.memory_kib > Self::MAX_MEMORY_KIB {
            return Err(PasswordError::InvalidParams(format!(
                "memory {} KiB is above the {} KiB limit",
                self.memory_kib,
                Self::MAX_MEMORY_KIB
            )));
        }
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| PasswordError::InvalidParams(e.to_string()))
    }
}

/// A fixed pool of threads that run every argon2 computation of a
/// [`PasswordHasher`]: at most `size` at once, the rest queue. Each worker
/// owns its argon2 memory ([`Memory`]): allocated on its first job, at the
/// size the configured parameters need, and reused by every later job, so
/// argon2 costs `size × m_cost` for the life of the process and never
/// goes back to the allocator (see [`Memory`] for why that matters).
struct Workers {
    size: usize,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// How many argon2 memory areas were ever allocated (one per worker,
    /// plus one per job whose stored hash needs more than the workers
    /// hold).
    allocations: Arc<AtomicUsize>,
}

type Job = Box<dyn FnOnce(&mut Memory) + Send + 'static>;

/// One worker's argon2 memory (`m_cost` blocks of 1 KiB).
///
/// Why it is kept rather than allocated per computation: glibc serves an
/// allocation this large with `mmap` only until the first one is freed;
/// then it raises its mmap threshold to that size (up to 32 MiB) and serves
/// the next ones from its heaps (arenas), shared with every thread. A burst
/// of 64 failed sign-ins on PostgreSQL — 64 request threads holding small
/// allocations in those same arenas while they wait on the store — pinned
/// freed 19 MiB blocks under live small ones: 6 arenas of ~54 MiB each,
/// up to +290 MiB resident (docs/SCALE.md). Memory that is
/// allocated once and never freed cannot fragment anything.
struct Memory {
    /// The block count the configured parameters need (allocated lazily).
    blocks: usize,
    area: Vec<Block>,
    allocations: Arc<AtomicUsize>,
}

impl Memory {
    fn new(blocks: usize, allocations: Arc<AtomicUsize>) -> Self {
        Memory {
            blocks,
            area: Vec::new(),
            allocations,
        }
    }

    /// Runs argon2 with this memory, or, for a stored hash made with more
    /// memory than the configured parameters (kept: stronger), with a
    /// one-off area of its size. Every block argon2 reads it has written
    /// in the same computation, so what an earlier one left is never used.
    fn hash_into(
        &mut self,
        argon2: &Argon2<'_>,
        pwd: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<(), argon2::Error> {
        let need = argon2.params().block_count();
        if need > self.blocks.max(self.area.len()) {
            self.allocations.fetch_add(1, Ordering::AcqRel);
            let mut once = vec![Block::default(); need];
            let done = argon2.hash_password_into_with_memory(pwd, salt, out, &mut once[..]);
            wipe(&mut once[..need]);
            return done;
        }
        if self.area.len() < need {
            self.allocations.fetch_add(1, Ordering::AcqRel);
            self.area = vec![Block::default(); self.blocks.max(need)];
        }
        let done = argon2.hash_password_into_with_memory(pwd, salt, out, &mut self.area[..]);
        wipe(&mut self.area[..need]);
        done
    }
}

/// Zeroes argon2 blocks once a computation is done with them: they are
/// derived from the password, and the worker's area stays in the process
/// (a core dump or swapped page would otherwise hold the last sign-in's).
/// About 1 ms for the default 19 MiB, against tens for argon2 itself.
fn wipe(blocks: &mut [Block]) {
    for b in blocks {
        b.zeroize();
    }
}

impl Workers {
    /// `size` threads, each with memory for `blocks` argon2 blocks.
    fn new(size: usize, blocks: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let allocations = Arc::new(AtomicUsize::new(0));
        let mut started = 0;
        for i in 0..size.max(1) {
            let rx = Arc::clone(&rx);
            let mut memory = Memory::new(blocks, Arc::clone(&allocations));
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for a job.
                        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        match job {
                            Ok(job) => job(&mut memory),
                            // The hasher is gone: so is its pool.
                            Err(_) => return,
                        }
                    }
                });
            if spawned.is_ok() {
                started += 1;
            }
        }
        Workers {
            size: started.max(1),
            // No worker could start: jobs run on the caller's thread.
            jobs: Mutex::new((started > 0).then_some(tx)),
            running: Arc::new(AtomicUsize::new(0)),
            peak: Arc::new(AtomicUsize::new(0)),
            allocations,
        }
    }

    /// Runs `f` on a worker, with that worker's memory, and waits for it;
    /// `None` if the worker died (a panic inside argon2).
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Memory) -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = mpsc::sync_channel(1);
        let (running, peak) = (Arc::clone(&self.running), Arc::clone(&self.peak));
        let job: Job = Box::new(move |memory| {
            let now = running.fetch_add(1, Ordering::AcqRel) + 1;
            peak.fetch_max(now, Ordering::AcqRel);
            let out = f(memory);
            running.fetch_sub(1, Ordering::AcqRel);
            let _ = done.send(out);
        });
        let sender = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // Without a worker, the job runs here with memory of its own.
        let here = || Memory::new(0, Arc::clone(&self.allocations));
        match sender {
            Some(tx) => {
                if let Err(mpsc::SendError(job)) = tx.send(job) {
                    job(&mut here());
                }
            }
            None => job(&mut here()),
        }
        result.recv().ok()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Closing the queue ends the threads (they are not joined: one may
        // be finishing a computation nobody waits for any more).
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// Hashes and verifies passwords with argon2id.
///
/// Every method is CPU- and memory-heavy: call it inside
/// `tokio::task::spawn_blocking`. The argon2 work itself runs on a pool of
/// [`Self::concurrency`] threads; more callers wait.
pub struct PasswordHasher {
    params: Argon2Params,
    argon2_params: Params,
    /// A hash made with the current parameters, for [`Self::verify_dummy`].
    /// `None` only if it could not be computed (see [`Default`]).
    dummy_phc: Option<String>,
    /// Where argon2 runs: bounds its memory to `concurrency × m_cost`.
    workers: Workers,
}

/// One argon2 computation per CPU the process may use.
fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Default for PasswordHasher {
    /// OWASP's m = 19456 KiB, t = 2, p = 1. Runs argon2 once (blocking).
    fn default() -> Self {
        let params = Argon2Params::default();
        match Self::new(params) {
            Ok(hasher) => hasher,
            // Unreachable with the default parameters; without a dummy
            // hash, `verify_dummy` hashes instead, which costs the same.
            Err(_) => Self {
                params,
                argon2_params: Params::DEFAULT,
                dummy_phc: None,
                workers: Workers::new(default_concurrency(), Params::DEFAULT.block_count()),
            },
        }
    }
}

impl PasswordHasher {
    /// What the dummy hash is a hash of. It need not be secret:
    /// [`Self::verify_dummy`] never reports success, whatever the input.
    const DUMMY_PASSWORD: &[u8] = b"latchkey: timing-equaliser for unknown usernames";
    const DUMMY_SALT: [u8; argon2::RECOMMENDED_SALT_LEN] = *b"latchkey-dummy!!";

    /// Validates `params` and precomputes the dummy hash (one full argon2
    /// run: blocking).
    ///
    /// # Errors
    /// [`PasswordError::WeakParams`] / [`PasswordError::InvalidParams`] for
    /// bad parameters; [`PasswordError::Hashing`] if argon2 fails.
    pub fn new(params: Argon2Params) -> Result<Self, PasswordError> {
        let argon2_params = params.to_argon2()?;
        let blocks = argon2_params.block_count();
        let mut hasher = Self {
            params,
            argon2_params,
            dummy_phc: None,
            workers: Workers::new(default_concurrency(), blocks),
        };
        let dummy = hasher.hash_with_salt(
            Zeroizing::new(Self::DUMMY_PASSWORD.to_vec()),
            Self::DUMMY_SALT,
        )?;
        hasher.dummy_phc = Some(dummy);
        Ok(hasher)
    }

    /// The parameters new hashes are made with.
    #[must_use]
    pub fn params(&self) -> Argon2Params {
        self.params
    }

    /// How many argon2 computations may run at once (one per CPU).
    #[must_use]
    pub fn concurrency(&self) -> usize {
        self.workers.size
    }

    /// The most argon2 computations that ever ran at once.
    #[must_use]
    pub fn peak_concurrency(&self) -> usize {
        self.workers.peak.load(Ordering::Acquire)
    }

    /// How many argon2 memory areas were ever allocated: one per worker
    /// that ran anything, plus one per verification of a stored hash made
    /// with more memory than the configured parameters.
    #[must_use]
    pub fn memory_allocations(&self) -> usize {
        self.workers.allocations.load(Ordering::Acquire)
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            self.argon2_params.clone(),
        )
    }

    /// Hashes `password` with a fresh 128-bit random salt and returns the
    /// PHC string to store. Blocking: use `spawn_blocking`.
    ///
    /// # Errors
    /// [`PasswordError::Rng`] or [`PasswordError::Hashing`].
    pub fn hash(&self, password: &SecretString) -> Result<String, PasswordError> {
        let mut salt = [0u8; argon2::RECOMMENDED_SALT_LEN];
        OsRng
            .try_fill_bytes(&mut salt)
            .map_err(|_| PasswordError::Rng)?;
        let pw = Zeroizing::new(password.expose_secret().as_bytes().to_vec());
        self.hash_with_salt(pw, salt)
    }

    /// The PHC string of argon2id over `pw` and `salt` with the configured
    /// parameters, computed on a worker.
    fn hash_with_salt(
        &self,
        pw: Zeroizing<Vec<u8>>,
        salt: [u8; argon2::RECOMMENDED_SALT_LEN],
    ) -> Result<String, PasswordError> {
        let argon2 = self.argon2();
        self.workers
            .run(move |memory| phc_hash(&argon2, memory, &pw, &salt))
            .ok_or(PasswordError::Worker)?
            .map_err(PasswordError::Hashing)
    }

    /// Checks `password` against a stored PHC string, using the parameters
    /// recorded in it; the final comparison is constant-time. `Ok(false)`
    /// means a wrong password. Blocking: use `spawn_blocking`.
    ///
    /// # Errors
    /// [`PasswordError::MalformedHash`] if `phc` cannot be parsed or is not
    /// an argon2 hash; [`PasswordError::Hashing`] if argon2 fails.
    pub fn verify(&self, password: &SecretString, phc: &str) -> Result<bool, PasswordError> {
        let parsed = PasswordHash::new(phc).map_err(|_| PasswordError::MalformedHash)?;
        if Algorithm::new(parsed.algorithm.as_str()).is_err() {
            return Err(PasswordError::MalformedHash);
        }
        let pw = Zeroizing::new(password.expose_secret().as_bytes().to_vec());
        let phc = phc.to_owned();
        let verdict = self
            .workers
            .run(move |memory| phc_verify(memory, &pw, &phc))
            .ok_or(PasswordError::Worker)?;
        match verdict {
            Ok(()) => Ok(true),
            Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
            Err(
                argon2::password_hash::Error::Algorithm
                | argon2::password_hash::Error::ParamsInvalid
                | argon2::password_hash::Error::ParamInvalid { .. }
                | argon2::password_hash::Error::SaltInvalid
                | argon2::password_hash::Error::Version,
            ) => Err(PasswordError::MalformedHash),
            Err(e) => Err(PasswordError::Hashing(e)),
        }
    }

    /// Spends the same time as [`Self::verify`] against a real account and
    /// always returns `false`. Call it when the username is unknown so that
    /// the response time does not tell an attacker which usernames exist.
    /// Blocking: use `spawn_blocking`.
    pub fn verify_dummy(&self, password: &SecretString) -> bool {
        match &self.dummy_phc {
            Some(dummy) => {
                std::hint::black_box(self.verify(password, dummy)).ok();
            }
            None => {
                std::hint::black_box(self.hash(password)).ok();
            }
        }
        false
    }

    /// True when `phc` should be replaced by a fresh [`Self::hash`] after a
    /// successful login: it is not argon2id v19, it is unparseable, its
    /// memory or passes are below the current parameters, its lane count
    /// differs, or its output is shorter than 32 bytes. Stronger old hashes
    /// are kept (lowering the parameters never weakens stored hashes).
    #[must_use]
    pub fn needs_rehash(&self, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return true;
        };
        if parsed.algorithm.as_str() != Algorithm::Argon2id.as_str()
            || parsed.version != Some(u32::from(Version::V0x13))
        {
            return true;
        }
        let Ok(stored) = Params::try_from(&parsed) else {
            return true;
        };
        stored.m_cost() < self.params.memory_kib
            || stored.t_cost() < self.params.iterations
            || stored.p_cost() != self.params.parallelism
            || stored.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)
                < Params::DEFAULT_OUTPUT_LEN
    }
}

/// argon2id (v19) of `pw` and `salt` with `argon2`'s parameters in
/// `memory`, as a PHC string (what `argon2`'s own `hash_password_with_salt`
/// makes, without allocating its memory).
fn phc_hash(
    argon2: &Argon2<'_>,
    memory: &mut Memory,
    pw: &[u8],
    salt: &[u8],
) -> Result<String, PhcError> {
    let salt = Salt::new(salt)?;
    let params = argon2.params();
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let mut buf = Zeroizing::new([0u8; Output::MAX_LENGTH]);
    let out = buf.get_mut(..len).ok_or(PhcError::OutputSize)?;
    memory.hash_into(argon2, pw, &salt, out)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params)?,
        salt: Some(salt),
        hash: Some(Output::new(out)?),
    };
    Ok(phc.to_string())
}

/// Checks `pw` against the PHC string `phc` with the algorithm, version
/// and parameters recorded in it, in `memory`; the outputs are compared in
/// constant time (`Output`'s equality). What `argon2`'s
/// `verify_password` does, without allocating its memory.
fn phc_verify(memory: &mut Memory, pw: &[u8], phc: &str) -> Result<(), PhcError> {
    let parsed = PasswordHash::new(phc)?;
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Err(PhcError::PasswordInvalid);
    };
    let algorithm = Algorithm::try_from(parsed.algorithm.as_str())?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()?
        .unwrap_or_default();
    let argon2 = Argon2::new(algorithm, version, Params::try_from(&parsed)?);
    let mut buf = Zeroizing::new([0u8; Output::MAX_LENGTH]);
    let out = buf.get_mut(..expected.len()).ok_or(PhcError::OutputSize)?;
    memory.hash_into(&argon2, pw, salt, out)?;
    if Output::new(out)? == *expected {
        Ok(())
    } else {
        Err(PhcError::PasswordInvalid)
    }
}

#[cfg(test)]
#[path = "password_tests.rs"]
mod tests;
