//! The command line: every subcommand, its flags, and their help text.
//!
//! Secrets are never accepted as arguments (argv is visible to every local
//! user through /proc); they come from stdin, a TTY prompt, or a file.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "latchkey",
    version = latchkey_core::update::version(),
    about = "Latchkey: the trusted front door and key keeper for personal AI agents",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Data directory [default: $STATE_DIRECTORY, else $XDG_DATA_HOME/latchkey,
    /// else ~/.local/share/latchkey]
    #[arg(long, env = "LATCHKEY_DATA_DIR", global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Configuration file [default: DATA_DIR/latchkey.toml]
    #[arg(long, env = "LATCHKEY_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format
    #[arg(long, env = "LATCHKEY_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// File holding the vault passphrase (passphrase mode), instead of a prompt
    #[arg(
        long,
        env = "LATCHKEY_PASSPHRASE_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Auto,
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS server
    Serve(ServeArgs),
    /// Store, list, read and delete secrets
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Write an encrypted backup of the whole data directory
    Backup(BackupArgs),
    /// Restore a backup into the data directory
    Restore(RestoreArgs),
    /// Unseal a running server's vault (passphrase mode)
    Unseal(UnsealArgs),
    /// Seal a running server's vault: drop its keys from memory
    Seal,
    /// Print a new random master key (for `systemd-creds encrypt`)
    Keygen,
    /// Create the owner (first run): password, TOTP and recovery codes
    Setup(SetupArgs),
    /// Users: list, invite, reset a locked-out user's MFA
    #[command(subcommand)]
    User(UserCommand),
    /// The audit log
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Configuration
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Certificates
    #[command(subcommand)]
    Tls(TlsCommand),
    /// The store: move it to another backend (docs/SCALE.md)
    #[command(subcommand)]
    Store(StoreCommand),
    /// The systemd service for a binary installed without the .deb
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Look for a newer signed release and install it (docs/UPDATES.md)
    Update(UpdateArgs),
    /// Check that this binary runs here and can read the configuration and
    /// the data's schema (opens nothing for writing; `update` runs it on a
    /// new build)
    SelfCheck,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Only report whether a newer release is available
    #[arg(long, conflicts_with_all = ["yes", "scheduled"])]
    pub check: bool,
    /// Install without asking
    #[arg(long)]
    pub yes: bool,
    /// The feed to read instead of `update.feed` (https://, or http:// to
    /// a loopback host)
    #[arg(long, value_name = "URL")]
    pub feed: Option<String>,
    /// As run by latchkey-update.timer: install only if
    /// `update.auto_install` is true, otherwise only check
    #[arg(long, conflicts_with = "yes")]
    pub scheduled: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (repeatable), e.g. 0.0.0.0:8443 or [::]:8443
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Create the vault's keys (passphrase mode asks for a new passphrase)
    Init(InitArgs),
    /// Store a secret read from stdin (or a prompt on a terminal)
    Put(PutArgs),
    /// Import many secrets from a .env file or JSON lines on stdin
    Import(ImportArgs),
    /// List entries (metadata only, never secret values)
    List(ListArgs),
    /// Show an entry; with --reveal, print its secret value alone
    Get(GetArgs),
    /// Delete an entry
    Rm(RmArgs),
    /// Replace the master key and re-wrap the vault's data key
    RotateMaster(RotateArgs),
    /// Decrypt every entry to check the vault's integrity
    Verify,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Read the new passphrase from stdin instead of prompting
    #[arg(long)]
    pub passphrase_stdin: bool,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// Entry name: letters, digits, `.`, `_`, `-`
    pub name: String,
    /// Kind of secret
    #[arg(long, default_value = "generic", value_parser = parse_kind)]
    pub kind: latchkey_core::vault::Kind,
    /// Provider the secret belongs to (e.g. openai, anthropic, spotify)
    #[arg(long)]
    pub provider: Option<String>,
    /// Label as KEY=VALUE (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Overwrite an existing entry of the same name
    #[arg(long)]
    pub replace: bool,
}

fn parse_kind(s: &str) -> Result<latchkey_core::vault::Kind, String> {
    s.parse()
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Input format: `env` (KEY=VALUE lines, as in a .env file) or `jsonl`
    /// (one {"name","secret","kind"?,"provider"?} object per line)
    #[arg(long, value_enum, default_value = "env")]
    pub format: ImportFormat,
    /// Kind for entries that do not say
    #[arg(long, default_value = "api_key", value_parser = parse_kind)]
    pub kind: latchkey_core::vault::Kind,
    /// Provider for entries that do not say
    #[arg(long)]
    pub provider: Option<String>,
    /// Overwrite existing entries of the same name
    #[arg(long)]
    pub replace: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ImportFormat {
    Env,
    Jsonl,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub name: String,
    /// Print the secret value alone (nothing else) to stdout
    #[arg(long)]
    pub reveal: bool,
    /// Print metadata as JSON
    #[arg(long, conflicts_with = "reveal")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    pub name: String,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// systemd-credential mode: file holding the new key (from `latchkey keygen`)
    #[arg(long, value_name = "FILE")]
    pub new_key_file: Option<PathBuf>,
    /// passphrase mode: read the current and then the new passphrase from stdin, one per line
    #[arg(long)]
    pub passphrase_stdin: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["recipient", "passphrase_stdin"])))]
pub struct BackupArgs {
    /// Where to write the backup
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Encrypt to this age recipient (age1…)
    #[arg(long, value_name = "AGE_RECIPIENT")]
    pub recipient: Option<String>,
    /// Encrypt with a passphrase read from stdin
    #[arg(long)]
    pub passphrase_stdin: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("with").required(true).args(["identity", "passphrase_stdin"])))]
pub struct RestoreArgs {
    /// The backup file
    pub file: PathBuf,
    /// age identity file that opens the backup
    #[arg(long, value_name = "KEYFILE")]
    pub identity: Option<PathBuf>,
    /// Read the backup's passphrase from stdin
    #[arg(long)]
    pub passphrase_stdin: bool,
    /// Replace an existing vault in the data directory
    #[arg(long)]
    pub force: bool,
    /// Believe a backup signed by this backup key (SHA256:…, as `latchkey
    /// backup` printed it on the installation it came from); needed to
    /// restore a recipient backup into a new data directory
    #[arg(long, value_name = "FINGERPRINT")]
    pub trust: Option<String>,
    /// Accept a recipient backup that carries no signature (made before
    /// backups were signed). Anyone holding the age recipient could have
    /// made such a file: use only for a backup you know is yours
    #[arg(long)]
    pub allow_unsigned: bool,
}

#[derive(Debug, Args)]
pub struct UnsealArgs {
    /// Read the passphrase from stdin instead of prompting
    #[arg(long)]
    pub passphrase_stdin: bool,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The owner's username
    #[arg(long)]
    pub username: String,
    /// Read the password from stdin (one line) instead of prompting
    #[arg(long)]
    pub password_stdin: bool,
    /// Print JSON: {"username","otpauth_uri","qr_svg","recovery_codes"}
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// List users
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a user's TOTP and recovery codes and end their sessions (audited)
    ResetMfa { username: String },
    /// Create a single-use invite link
    Invite {
        /// admin, user or guest
        #[arg(long)]
        role: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the latest entries, oldest first
    Tail {
        /// How many entries
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Keep printing new entries as they arrive
        #[arg(long)]
        follow: bool,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective settings (secrets redacted)
    Check,
}

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Print the local CA certificate (PEM)
    ExportCa,
    /// Show the CA and server certificates: subjects, names, expiry
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy the configured store, verified, into an empty PostgreSQL
    /// database or a new data directory (with no server running)
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The destination: `postgres://user@host:port/database` (no password
    /// here: it goes in PGPASSWORD) or a directory without a database
    #[arg(long, value_name = "URL_OR_DIR")]
    pub to: String,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write the hardened unit for this binary, enable and start it (root)
    Install(ServiceArgs),
    /// Stop, disable and remove the unit `install` wrote (root; data kept)
    Uninstall(ServiceArgs),
    /// Explain the service's state: unit file, enabled, running, where to open
    Status(ServiceArgs),
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// systemctl to run [default: `systemctl` from PATH, only when systemd runs]
    #[arg(long, env = "LATCHKEY_SYSTEMCTL", value_name = "PATH")]
    pub systemctl: Option<PathBuf>,
    /// Where the unit file goes
    #[arg(
        long,
        env = "LATCHKEY_SYSTEMD_UNIT_DIR",
        value_name = "DIR",
        default_value = "/etc/systemd/system"
    )]
    pub unit_dir: PathBuf,
    /// The service's data directory (its `StateDirectory=`), for the
    /// address it serves on
    #[arg(
        long,
        env = "LATCHKEY_SERVICE_STATE_DIR",
        value_name = "DIR",
        default_value = "/var/lib/latchkey"
    )]
    pub state_dir: PathBuf,
}
