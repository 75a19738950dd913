//! Signature verification of the commit (and the tag) a ref resolves to: SSH signatures against
//! an allowed-signers file, OpenPGP signatures against armored public keys. Git stores both kinds
//! in a commit's `gpgsig` header and at the end of a tag's message.
use git2::{Oid, Repository};
use pgp::composed::{Deserializable, SignedPublicKey, StandaloneSignature};
use pgp::types::KeyDetails;
use ssh_key::{HashAlg, PublicKey, SshSig};

use crate::error::{Error, Result};
use crate::fetch::Resolved;

/// Which objects must carry a valid signature (Flux's `verify.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VerifyMode {
    #[default]
    #[serde(rename = "HEAD", alias = "head")]
    Head,
    Tag,
    TagAndHEAD,
}

#[derive(Clone, Debug)]
pub struct Verify {
    pub mode: VerifyMode,
    pub keys: Keys,
}

#[derive(Clone, Debug)]
pub enum Keys {
    /// git's `gpg.ssh.allowedSignersFile` format.
    Ssh(Vec<AllowedSigner>),
    OpenPgp(Vec<SignedPublicKey>),
}

#[derive(Clone, Debug)]
pub struct AllowedSigner {
    pub principals: String,
    pub key: PublicKey,
}

/// Who signed, as recorded in a revision.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum SignatureStatus {
    /// Verification is off for this source.
    NotRequired,
    Verified {
        provider: String,
        signer: String,
    },
}

/// The namespace git signs with (`ssh-keygen -Y sign -n git`).
const SSH_NAMESPACE: &str = "git";
const PGP_ARMOR: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";

impl Keys {
    /// An armored OpenPGP key file, or else an allowed-signers file.
    pub fn parse(text: &str) -> Result<Self> {
        if text.trim_start().starts_with(PGP_ARMOR) {
            let (keys, _) = SignedPublicKey::from_string_many(text).map_err(|e| Error::Keys(e.to_string()))?;
            let keys = keys.collect::<Result<Vec<_>, _>>().map_err(|e| Error::Keys(e.to_string()))?;
            for key in &keys {
                key.verify().map_err(|e| Error::Keys(format!("key {}: {e}", pgp_fingerprint(key))))?;
            }
            if keys.is_empty() {
                return Err(Error::Keys("no OpenPGP key in the armored block".into()));
            }
            Ok(Keys::OpenPgp(keys))
        } else {
            let signers = parse_allowed_signers(text)?;
            if signers.is_empty() {
                return Err(Error::Keys("no allowed signer and no OpenPGP key".into()));
            }
            Ok(Keys::Ssh(signers))
        }
    }

    fn provider(&self) -> &'static str {
        match self {
            Keys::Ssh(_) => "ssh",
            Keys::OpenPgp(_) => "openpgp",
        }
    }

    /// The signer when `signature` is a valid signature of `data` by one of the keys.
    fn verify(&self, signature: &[u8], data: &[u8]) -> Result<String, String> {
        let text = std::str::from_utf8(signature).map_err(|_| "the signature is not text".to_string())?;
        match self {
            Keys::Ssh(signers) => {
                let sig = SshSig::from_pem(text).map_err(|e| format!("not an SSH signature ({e})"))?;
                if sig.namespace() != SSH_NAMESPACE {
                    return Err(format!("SSH signature for namespace {:?}, not {SSH_NAMESPACE:?}", sig.namespace()));
                }
                let fingerprint = PublicKey::from(sig.public_key().clone()).fingerprint(HashAlg::Sha256);
                let signer = signers
                    .iter()
                    .find(|s| s.key.key_data() == sig.public_key())
                    .ok_or_else(|| format!("signed by {fingerprint}, which is not an allowed signer"))?;
                signer.key.verify(SSH_NAMESPACE, data, &sig).map_err(|e| {
                    format!("the signature by {} ({fingerprint}) does not verify: {e}", signer.principals)
                })?;
                Ok(format!("{} {fingerprint}", signer.principals))
            }
            Keys::OpenPgp(keys) => {
                let (sig, _) =
                    StandaloneSignature::from_string(text).map_err(|e| format!("not an OpenPGP signature ({e})"))?;
                for key in keys {
                    // The primary key or any signing subkey may have made it.
                    let by_subkey = key.public_subkeys.iter().any(|k| sig.verify(&k.key, data).is_ok());
                    if by_subkey || sig.verify(&key.primary_key, data).is_ok() {
                        return Ok(format!("{} {}", pgp_user(key), pgp_fingerprint(key)));
                    }
                }
                let issuers: Vec<String> =
                    sig.signature.issuer().iter().map(|id| hex::encode_upper(id.as_ref())).collect();
                Err(format!("the OpenPGP signature (issuer {}) does not verify with any given key", issuers.join(", ")))
            }
        }
    }
}

impl Verify {
    /// Checks what `mode` asks for; the error is the reason, for the user.
    pub fn check(&self, repo: &Repository, resolved: &Resolved) -> Result<SignatureStatus, String> {
        let mut signers = Vec::new();
        if matches!(self.mode, VerifyMode::Tag | VerifyMode::TagAndHEAD) {
            let tag = resolved
                .tag
                .ok_or_else(|| format!("{}: not an annotated tag, so it carries no signature", resolved.name))?;
            let (signature, data) = tag_signature(repo, tag)?;
            signers.push(self.keys.verify(&signature, &data).map_err(|e| format!("tag {tag}: {e}"))?);
        }
        if matches!(self.mode, VerifyMode::Head | VerifyMode::TagAndHEAD) {
            let commit = resolved.commit;
            let (signature, data) =
                repo.extract_signature(&commit, None).map_err(|_| format!("commit {commit} is not signed"))?;
            signers.push(self.keys.verify(&signature, &data).map_err(|e| format!("commit {commit}: {e}"))?);
        }
        signers.dedup();
        Ok(SignatureStatus::Verified { provider: self.keys.provider().into(), signer: signers.join("; ") })
    }
}

/// A tag object's signature is the armored block that ends its message; the signed data is
/// everything before it.
fn tag_signature(repo: &Repository, tag: Oid) -> Result<(Vec<u8>, Vec<u8>), String> {
    let odb = repo.odb().map_err(|e| e.message().to_string())?;
    let object = odb.read(tag).map_err(|e| format!("tag {tag}: {}", e.message()))?;
    let raw = object.data();
    let start = ["\n-----BEGIN PGP SIGNATURE-----", "\n-----BEGIN SSH SIGNATURE-----"]
        .iter()
        .filter_map(|marker| find_last(raw, marker.as_bytes()))
        .max()
        .ok_or_else(|| format!("tag {tag} is not signed"))?
        + 1;
    Ok((raw[start..].to_vec(), raw[..start].to_vec()))
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

/// Lines `principals [options] keytype base64 [comment]`; `#` starts a comment line.
fn parse_allowed_signers(text: &str) -> Result<Vec<AllowedSigner>> {
    let mut signers = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |message: String| Error::Keys(format!("allowed signers line {}: {message}", index + 1));
        let fields = split_fields(line);
        // Options (cert-authority, namespaces="...", valid-after=...) sit between the principals
        // and the key; the key starts at the first field that names a key type.
        let key_at = fields
            .iter()
            .position(|f| f.starts_with("ssh-") || f.starts_with("ecdsa-") || f.starts_with("sk-"))
            .filter(|&i| i >= 1 && i + 1 < fields.len())
            .ok_or_else(|| bad("expected principals, then a public key".into()))?;
        let options = &fields[1..key_at];
        if options.iter().any(|o| o.starts_with("cert-authority") || o.starts_with("valid-")) {
            return Err(bad("cert-authority and valid-after/valid-before are not supported".into()));
        }
        if let Some(namespaces) = options.iter().find_map(|o| o.strip_prefix("namespaces="))
            && !namespaces.trim_matches('"').split(',').any(|n| n == SSH_NAMESPACE)
        {
            continue;
        }
        let key = PublicKey::from_openssh(&format!("{} {}", fields[key_at], fields[key_at + 1]))
            .map_err(|e| bad(format!("public key: {e}")))?;
        signers.push(AllowedSigner { principals: fields[0].to_string(), key });
    }
    Ok(signers)
}

/// Whitespace-separated fields; double quotes keep spaces inside one field.
fn split_fields(line: &str) -> Vec<&str> {
    let mut fields = Vec::new();
    let (mut start, mut quoted) = (None, false);
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if let Some(s) = start.take() {
                    fields.push(&line[s..i]);
                }
                continue;
            }
            _ => {}
        }
        start.get_or_insert(i);
    }
    if let Some(s) = start {
        fields.push(&line[s..]);
    }
    fields
}

fn pgp_fingerprint(key: &SignedPublicKey) -> String {
    hex::encode_upper(key.fingerprint().as_bytes())
}

fn pgp_user(key: &SignedPublicKey) -> String {
    key.details.users.first().map(|u| String::from_utf8_lossy(u.id.id()).into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_signers_with_options_and_comments() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKgyJN/LVpdyD4Cp3/diuELQelYrsakN6ZQn8LqMVoOF";
        let text = format!(
            "# team\nalice@example.com {key} laptop\nbob namespaces=\"git,file\" {key}\ncarol namespaces=\"file\" {key}\n"
        );
        let signers = parse_allowed_signers(&text).unwrap();
        let names: Vec<_> = signers.iter().map(|s| s.principals.as_str()).collect();
        assert_eq!(names, ["alice@example.com", "bob"]);
        assert!(parse_allowed_signers("alice").is_err());
    }
}
