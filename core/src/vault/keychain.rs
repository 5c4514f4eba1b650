//! The OS keychain, through the `keyring` crate.
//!
//! On Linux there are two stores and neither is right everywhere:
//! - **Secret Service** (GNOME Keyring, KWallet, KeePassXC) over D-Bus:
//!   persistent and encrypted at rest, but needs a session bus and an
//!   unlocked keyring daemon — i.e. a desktop session.
//! - **keyutils**, the kernel's session keyring: works on a headless box with
//!   no D-Bus at all, but lives in kernel memory and is gone after a reboot.
//!
//! `auto` picks Secret Service when a session bus is advertised
//! (`DBUS_SESSION_BUS_ADDRESS`) and keyutils otherwise. A headless home server
//! that must survive reboots should use `keyfile` or `systemd-credential`
//! instead; `keyring` is the desktop app's source.

use age::secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyringBackend {
    #[default]
    Auto,
    SecretService,
    Keyutils,
}

impl KeyringBackend {
    /// The concrete store `auto` resolves to in this environment.
    pub fn resolve(self) -> KeyringBackend {
        match self {
            KeyringBackend::Auto if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some() => {
                KeyringBackend::SecretService
            }
            KeyringBackend::Auto => KeyringBackend::Keyutils,
            other => other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyringBackend::Auto => "auto",
            KeyringBackend::SecretService => "secret-service",
            KeyringBackend::Keyutils => "keyutils",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeychainError {
    #[error("no entry {service}/{account} in the {backend} keychain")]
    NotFound {
        service: String,
        account: String,
        backend: &'static str,
    },
    #[error("the {backend} keychain is not available: {detail}")]
    Unavailable {
        backend: &'static str,
        detail: String,
    },
}

fn entry(
    backend: KeyringBackend,
    service: &str,
    account: &str,
) -> Result<keyring::Entry, KeychainError> {
    let backend = backend.resolve();
    let unavailable = |e: keyring::Error| KeychainError::Unavailable {
        backend: backend.as_str(),
        detail: e.to_string(),
    };
    #[cfg(target_os = "linux")]
    {
        let cred: Box<keyring::credential::Credential> = match backend {
            KeyringBackend::SecretService => Box::new(
                keyring::secret_service::SsCredential::new_with_target(None, service, account)
                    .map_err(unavailable)?,
            ),
            _ => Box::new(
                keyring::keyutils::KeyutilsCredential::new_with_target(None, service, account)
                    .map_err(unavailable)?,
            ),
        };
        Ok(keyring::Entry::new_with_credential(cred))
    }
    #[cfg(not(target_os = "linux"))]
    {
        keyring::Entry::new(service, account).map_err(unavailable)
    }
}

fn map_err(
    backend: KeyringBackend,
    service: &str,
    account: &str,
    e: keyring::Error,
) -> KeychainError {
    match e {
        keyring::Error::NoEntry => KeychainError::NotFound {
            service: service.into(),
            account: account.into(),
            backend: backend.resolve().as_str(),
        },
        other => KeychainError::Unavailable {
            backend: backend.resolve().as_str(),
            detail: other.to_string(),
        },
    }
}

pub fn get(
    backend: KeyringBackend,
    service: &str,
    account: &str,
) -> Result<SecretString, KeychainError> {
    entry(backend, service, account)?
        .get_password()
        .map(SecretString::from)
        .map_err(|e| map_err(backend, service, account, e))
}

pub fn set(
    backend: KeyringBackend,
    service: &str,
    account: &str,
    value: &SecretString,
) -> Result<(), KeychainError> {
    entry(backend, service, account)?
        .set_password(value.expose_secret())
        .map_err(|e| map_err(backend, service, account, e))
}

pub fn delete(backend: KeyringBackend, service: &str, account: &str) -> Result<(), KeychainError> {
    entry(backend, service, account)?
        .delete_credential()
        .map_err(|e| map_err(backend, service, account, e))
}
