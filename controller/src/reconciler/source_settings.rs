//! A rollout's `spec.source` and the Secrets it names, as the Git source's settings: the ref, the
//! credentials and the signing keys.
use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use palisade_rollout::crd::{GitSource, VerifyMode as SpecMode, VerifyProvider};
use palisade_source::{Credentials, GitRef, Keys, SourceSpec, Verify, VerifyMode};

use super::Error;

/// The source settings and credentials of a rollout, with a digest of the Secrets' data; `Ok(Err)`
/// for a problem the user must fix, said so that the status can show it.
pub(super) async fn read_settings(
    source: &GitSource,
    secrets: &impl SecretStore,
) -> Result<Result<((SourceSpec, Credentials), u64), String>, Error> {
    let mut digest = DefaultHasher::new();
    let credentials = match &source.secret_ref {
        None => Credentials::default(),
        Some(secret) => {
            let Some(data) = secrets.data(&secret.name).await? else {
                return Ok(Err(format!("spec.source.secretRef: Secret {} not found", secret.name)));
            };
            data.hash(&mut digest);
            match Credentials::from_map(&data) {
                Ok(credentials) => credentials,
                Err(e) => return Ok(Err(format!("spec.source.secretRef: Secret {}: {e}", secret.name))),
            }
        }
    };
    let mut spec = SourceSpec::new(
        &source.url,
        GitRef::first_of(
            source.git_ref.branch.as_deref(),
            source.git_ref.tag.as_deref(),
            source.git_ref.semver.as_deref(),
            source.git_ref.commit.as_deref(),
        ),
    );
    spec.path = source.path.clone().unwrap_or_default();
    spec.ignore = source.ignore.clone().unwrap_or_default();
    spec.timeout = source.timeout.into();
    if let Some(verify) = &source.verify {
        let name = &verify.keys_ref.name;
        let Some(data) = secrets.data(name).await? else {
            return Ok(Err(format!("spec.source.verify.keysRef: Secret {name} not found")));
        };
        data.hash(&mut digest);
        match keys(verify.provider, &data) {
            Ok(keys) => spec.verify = Some(Verify { mode: verify_mode(verify.mode), keys }),
            Err(e) => return Ok(Err(format!("spec.source.verify.keysRef: Secret {name}: {e}"))),
        }
    }
    Ok(Ok(((spec, credentials), digest.finish())))
}

/// Which source URLs are fetched. In a cluster, only transports that authenticate the server
/// (https://, ssh://) unless the controller runs with `--allow-insecure-sources`; local mode reads
/// the developer's own repositories, file:// included. The CRD admits all four schemes, since
/// admission cannot know the flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowedSources {
    Secure,
    Any,
}

impl AllowedSources {
    /// The status message when `url` may not be fetched.
    pub(super) fn check(self, url: &str) -> Result<(), String> {
        if self == AllowedSources::Any || ["https://", "ssh://"].iter().any(|scheme| url.starts_with(scheme)) {
            return Ok(());
        }
        Err(format!(
            "spec.source.url {url} is not fetched: a controller in a cluster fetches only https:// and \
             ssh:// sources unless it runs with --allow-insecure-sources (which also allows http:// and file://)"
        ))
    }
}

/// Where a rollout's Secrets come from: the API server, or local mode's files.
pub trait SecretStore: Sync {
    /// The data of the Secret `name` in the rollout's namespace, `None` when there is none.
    fn data(&self, name: &str) -> impl Future<Output = Result<Option<BTreeMap<String, Vec<u8>>>, Error>> + Send;
}

impl SecretStore for Api<Secret> {
    async fn data(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
        Ok(self.get_opt(name).await?.map(|secret| secret_data(&secret)))
    }
}

/// Local mode: Secrets given with the rollout, by name.
impl SecretStore for BTreeMap<String, Secret> {
    async fn data(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
        Ok(self.get(name).map(secret_data))
    }
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> =
        secret.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    // stringData is write-only in a real cluster; honoured for objects read as written.
    data.extend(secret.string_data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
    data
}

/// Every value of the keys Secret is a key file: armored OpenPGP keys or an allowed-signers file.
fn keys(provider: VerifyProvider, data: &BTreeMap<String, Vec<u8>>) -> Result<Keys, String> {
    let mut ssh = Vec::new();
    let mut pgp = Vec::new();
    for (key, bytes) in data {
        let text = std::str::from_utf8(bytes).map_err(|_| format!("{key}: not UTF-8"))?;
        match Keys::parse(text).map_err(|e| format!("{key}: {e}"))? {
            Keys::Ssh(signers) => ssh.extend(signers),
            Keys::OpenPgp(keys) => pgp.extend(keys),
        }
    }
    match provider {
        VerifyProvider::Ssh if !ssh.is_empty() && pgp.is_empty() => Ok(Keys::Ssh(ssh)),
        VerifyProvider::Openpgp if !pgp.is_empty() && ssh.is_empty() => Ok(Keys::OpenPgp(pgp)),
        VerifyProvider::Ssh => Err("provider ssh needs allowed-signers entries and no OpenPGP keys".into()),
        VerifyProvider::Openpgp => Err("provider openpgp needs armored OpenPGP public keys only".into()),
    }
}

fn verify_mode(mode: SpecMode) -> VerifyMode {
    match mode {
        SpecMode::Head => VerifyMode::Head,
        SpecMode::Tag => VerifyMode::Tag,
        SpecMode::TagAndHead => VerifyMode::TagAndHEAD,
    }
}

#[cfg(test)]
mod tests {
    use super::AllowedSources;

    #[test]
    fn a_cluster_fetches_only_authenticated_transports_unless_allowed() {
        for url in ["https://git.example/policies.git", "ssh://git@git.example/policies"] {
            assert_eq!(AllowedSources::Secure.check(url), Ok(()), "{url}");
        }
        for url in ["http://git.example/policies.git", "file:///srv/policies"] {
            let refused = AllowedSources::Secure.check(url).expect_err(url);
            assert!(refused.contains(url) && refused.contains("--allow-insecure-sources"), "{refused}");
            assert_eq!(AllowedSources::Any.check(url), Ok(()), "{url}");
        }
    }
}
