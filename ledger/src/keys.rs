//! An Ed25519 signing key: the ledger key signs checkpoints, and the API
//! holds another for seat tokens. Loaded from a key file (generated there
//! on first start), never from the database it signs. A key file is an
//! Ed25519 private key as PKCS#8 v1 (RFC 5208, what `openssl genpkey
//! -algorithm ed25519` and most libraries write) or v2 (RFC 5958, with the
//! public key; what seatledger writes), in DER or PEM.
//! The private key is never logged: `Debug` shows only the key id.
//!
//! ed25519-dalek decodes every accepted form; the key is then held as the
//! one canonical v2 DER document ring generates, which ring checks (its
//! public key must be the private key's), so that a key reads the same
//! whatever form its file has; ed25519-dalek signs. Ed25519 signatures are deterministic, so both give
//! the same bytes (a property test holds them to it); dalek's signing was
//! 17.4 µs against ring's 23.8 µs here, and the API signs a seat token for
//! every acquire and heartbeat answer (a fifth of the server's CPU under
//! load with ring; BENCHMARKS.md, "Choices these measurements settled").

use crate::store::StoreError;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use seatledger_schema::{key_id_of, ChainHash, Checkpoint, Timestamp};
use std::fmt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the signing key is not an Ed25519 private key in an accepted form: PKCS#8 v1 (RFC 5208, as `openssl genpkey -algorithm ed25519` writes it) or v2 (RFC 5958), DER or PEM (\"-----BEGIN PRIVATE KEY-----\")")]
    InvalidKey,
    #[error("cannot generate a signing key")]
    Generate,
    #[error("signing key file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct SigningKey {
    pair: Ed25519KeyPair,
    /// The same key, for signing (see the module docs).
    signer: ed25519_dalek::SigningKey,
    key_id: String,
    /// HMAC key derived from the private key, for values that must be
    /// reproducible by this ledger and unguessable by anyone else.
    derivation: ring::hmac::Key,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new key as a PKCS#8 document.
    pub fn generate_pkcs8() -> Result<Vec<u8>, KeyError> {
        let document =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        Ok(document.as_ref().to_vec())
    }

    pub fn generate() -> Result<SigningKey, KeyError> {
        SigningKey::from_pkcs8(&SigningKey::generate_pkcs8()?)
    }

    /// The key in `document`: PKCS#8 v1 or v2, DER or PEM.
    pub fn from_pkcs8(document: &[u8]) -> Result<SigningKey, KeyError> {
        let signer = decode_private_key(document)?;
        let document = canonical_pkcs8(&signer);
        let pair = Ed25519KeyPair::from_pkcs8(&document).map_err(|_| KeyError::InvalidKey)?;
        if signer.verifying_key().as_bytes() != pair.public_key().as_ref() {
            return Err(KeyError::InvalidKey);
        }
        let key_id = key_id_of(pair.public_key().as_ref());
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(b"seatledger derivation key v1\0");
        context.update(&document);
        let derivation = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, context.finish().as_ref());
        Ok(SigningKey {
            pair,
            signer,
            key_id,
            derivation,
        })
    }

    /// The key in the PKCS#8 file at `path`, generated there (mode 0600)
    /// if the file does not exist. Two processes starting at once agree on
    /// one key: the loser of the creation reads the winner's file.
    pub fn from_file(path: &Path) -> Result<SigningKey, KeyError> {
        let file_error = |source| KeyError::File {
            path: path.display().to_string(),
            source,
        };
        if !path.exists() {
            let document = SigningKey::generate_pkcs8()?;
            match write_private(path, &document) {
                Ok(()) => return SigningKey::from_pkcs8(&document),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(file_error(error)),
            }
        }
        let document = std::fs::read(path).map_err(file_error)?;
        SigningKey::from_pkcs8(&document)
    }

    /// Writes `document` (a PKCS#8 key) to a new file at `path`, mode 0600,
    /// synced; fails if the file exists.
    pub fn write_new_file(path: &Path, document: &[u8]) -> Result<(), KeyError> {
        SigningKey::from_pkcs8(document)?;
        write_private(path, document).map_err(|source| KeyError::File {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        use ed25519_dalek::Signer;
        self.signer.sign(message).to_bytes().to_vec()
    }

    /// HMAC-SHA-256 of `parts` (length-prefixed) under a key derived from
    /// the private key, separated by `label`.
    pub fn derive(&self, label: &str, parts: &[&[u8]]) -> [u8; 32] {
        let mut context = ring::hmac::Context::with_key(&self.derivation);
        for part in std::iter::once(label.as_bytes()).chain(parts.iter().copied()) {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
        let mut out = [0; 32];
        out.copy_from_slice(context.sign().as_ref());
        out
    }

    pub fn sign_checkpoint(
        &self,
        partition: i16,
        position: i64,
        hash: ChainHash,
        signed_at: Timestamp,
    ) -> Checkpoint {
        let message =
            Checkpoint::signed_message(partition, position, &hash, signed_at, &self.key_id);
        Checkpoint {
            partition,
            position,
            hash,
            signed_at,
            key_id: self.key_id.clone(),
            signature: self.sign(&message),
        }
    }
}

/// An Ed25519 private key from PKCS#8 v1 or v2, DER or PEM. A v2
/// document's public key must be its private key's.
fn decode_private_key(document: &[u8]) -> Result<ed25519_dalek::SigningKey, KeyError> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let pem = std::str::from_utf8(document)
        .ok()
        .map(str::trim)
        .filter(|text| text.starts_with("-----BEGIN"));
    match pem {
        Some(text) => ed25519_dalek::SigningKey::from_pkcs8_pem(text),
        None => ed25519_dalek::SigningKey::from_pkcs8_der(document),
    }
    .map_err(|_| KeyError::InvalidKey)
}

/// The PKCS#8 v2 DER document ring generates for this key (RFC 5958
/// `OneAsymmetricKey`, the public key as `[1] IMPLICIT BIT STRING`), byte
/// for byte.
fn canonical_pkcs8(key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    const BEFORE_SEED: [u8; 16] = [
        0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    const BEFORE_PUBLIC: [u8; 3] = [0x81, 0x21, 0x00];
    let mut document = Vec::with_capacity(83);
    document.extend_from_slice(&BEFORE_SEED);
    document.extend_from_slice(key.as_bytes());
    document.extend_from_slice(&BEFORE_PUBLIC);
    document.extend_from_slice(key.verifying_key().as_bytes());
    document
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_signatures_verify_and_fail_after_any_change() {
        let key = SigningKey::generate().unwrap();
        let hash = ChainHash([7; 32]);
        let checkpoint = key.sign_checkpoint(0, 1000, hash, Timestamp::from_micros_saturating(42));
        checkpoint.verify(key.key_id(), key.public_key()).unwrap();

        let mut changed = checkpoint.clone();
        changed.position += 1;
        assert!(changed.verify(key.key_id(), key.public_key()).is_err());
        let mut changed = checkpoint.clone();
        changed.hash.0[31] ^= 1;
        assert!(changed.verify(key.key_id(), key.public_key()).is_err());
        let mut changed = checkpoint.clone();
        changed.signed_at = Timestamp::from_micros_saturating(43);
        assert!(changed.verify(key.key_id(), key.public_key()).is_err());
        let mut changed = checkpoint.clone();
        changed.partition = 1;
        assert!(changed.verify(key.key_id(), key.public_key()).is_err());
        for index in 0..checkpoint.signature.len() {
            let mut changed = checkpoint.clone();
            changed.signature[index] ^= 0x01;
            assert!(
                changed.verify(key.key_id(), key.public_key()).is_err(),
                "signature byte {index}"
            );
        }
        let other = SigningKey::generate().unwrap();
        assert!(checkpoint.verify(key.key_id(), other.public_key()).is_err());
        assert!(checkpoint
            .verify(other.key_id(), other.public_key())
            .is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// dalek signs what ring would, byte for byte, and ring verifies it.
        #[test]
        fn signatures_are_the_ones_ring_makes(
            message in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
        ) {
            let key = SigningKey::generate().unwrap();
            let signature = key.sign(&message);
            proptest::prop_assert_eq!(&signature, &key.pair.sign(&message).as_ref().to_vec());
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.public_key())
                .verify(&message, &signature)
                .unwrap();
        }
    }

    #[test]
    fn a_document_whose_public_key_is_not_its_private_keys_is_refused() {
        let document = SigningKey::generate_pkcs8().unwrap();
        let mut changed = document.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        assert!(matches!(
            SigningKey::from_pkcs8(&changed),
            Err(KeyError::InvalidKey)
        ));
        assert!(matches!(
            SigningKey::from_pkcs8(b"not a key"),
            Err(KeyError::InvalidKey)
        ));
    }

    #[test]
    fn generated_documents_are_the_canonical_form() {
        for _ in 0..16 {
            let document = SigningKey::generate_pkcs8().unwrap();
            let signer = decode_private_key(&document).unwrap();
            assert_eq!(canonical_pkcs8(&signer), document);
        }
    }

    #[test]
    fn derivations_are_reproducible_per_key_and_label() {
        let document = SigningKey::generate_pkcs8().unwrap();
        let a = SigningKey::from_pkcs8(&document).unwrap();
        let b = SigningKey::from_pkcs8(&document).unwrap();
        assert_eq!(a.derive("x", &[b"1"]), b.derive("x", &[b"1"]));
        assert_ne!(a.derive("x", &[b"1"]), a.derive("y", &[b"1"]));
        assert_ne!(a.derive("x", &[b"1", b"2"]), a.derive("x", &[b"12"]));
        assert_ne!(
            a.derive("x", &[b"1"]),
            SigningKey::generate().unwrap().derive("x", &[b"1"])
        );
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let key = SigningKey::generate().unwrap();
        let text = format!("{key:?}");
        assert!(text.contains(key.key_id()));
        assert!(!text.contains("pair"));
    }
}
