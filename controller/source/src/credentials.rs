//! Credentials under the key names Flux uses for a GitRepository's secret, so the same Kubernetes
//! Secret works for both; in local mode they are files named after the keys.
use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

/// The keys a credentials secret may carry.
pub const KEYS: [&str; 6] = ["username", "password", "bearerToken", "identity", "known_hosts", "ca.crt"];

#[derive(Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
    pub bearer_token: Option<String>,
    /// An OpenSSH private key (PEM), possibly protected by `password`.
    pub identity: Option<String>,
    /// Host keys the server must present, in known_hosts format.
    pub known_hosts: Option<Vec<ssh_key::PublicKey>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets; say which ones are set.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.is_some())
            .field("bearer_token", &self.bearer_token.is_some())
            .field("identity", &self.identity.is_some())
            .field("known_hosts", &self.known_hosts.as_ref().map(Vec::len))
            .finish()
    }
}

impl Credentials {
    /// From a secret's data (key → bytes). Unknown keys are refused so a typo is not silently
    /// an anonymous fetch.
    pub fn from_map(data: &BTreeMap<String, Vec<u8>>) -> Result<Self> {
        let text = |key: &'static str| -> Result<Option<String>> {
            data.get(key)
                .map(|bytes| {
                    String::from_utf8(bytes.clone())
                        .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                        .map_err(|_| Error::Credentials { key, message: "not UTF-8".into() })
                })
                .transpose()
        };
        if let Some(key) = data.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(Error::Credentials {
                key: "secret",
                message: format!("unknown key {key:?} (expected one of {})", KEYS.join(", ")),
            });
        }
        if data.contains_key("ca.crt") {
            // libgit2 only takes CA bundles process-wide, which would leak one source's trust
            // into every other source's fetches.
            return Err(Error::Credentials { key: "ca.crt", message: "custom CAs are not supported yet".into() });
        }
        let known_hosts = text("known_hosts")?
            .map(|text| {
                ssh_key::known_hosts::KnownHosts::new(&text)
                    .map(|entry| entry.map(|e| e.public_key().clone()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Error::Credentials { key: "known_hosts", message: e.to_string() })
            })
            .transpose()?;
        Ok(Credentials {
            username: text("username")?,
            password: text("password")?,
            bearer_token: text("bearerToken")?,
            identity: text("identity")?,
            known_hosts,
        })
    }

    /// Local mode: every file in `dir` whose name is one of [`KEYS`].
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut data = BTreeMap::new();
        for key in KEYS {
            let path = dir.join(key);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    data.insert(key.to_string(), bytes);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::Io { path, source }),
            }
        }
        Self::from_map(&data)
    }
}
