//! Gateway credentials as Kubernetes Secrets hold them, in the two layouts istiod reads
//! (`pilot/pkg/credentials/kube/secrets.go`): `kubernetes.io/tls` (`tls.crt`, `tls.key`,
//! `ca.crt`) and Istio's generic one (`cert`, `key`, `cacert`). Only those keys are kept: the
//! rest of a Secret never enters the controller's memory past its decoding.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

/// Istio's generic layout.
pub const GENERIC_CERT: &str = "cert";
pub const GENERIC_KEY: &str = "key";
pub const GENERIC_CA: &str = "cacert";
pub const GENERIC_CRL: &str = "crl";
/// The `kubernetes.io/tls` layout (and its conventional CA key).
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const TLS_CA: &str = "ca.crt";
pub const TLS_CRL: &str = "ca.crl";

const KEPT: [&str; 8] = [
    GENERIC_CERT,
    GENERIC_KEY,
    GENERIC_CA,
    GENERIC_CRL,
    TLS_CERT,
    TLS_KEY,
    TLS_CA,
    TLS_CRL,
];

/// The credential keys of one Secret. Its `Debug` names the keys, never their values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CredentialSecret {
    pub data: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for CredentialSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.data.keys()).finish()
    }
}

impl CredentialSecret {
    /// The credential keys of `secret` (`data`, and `stringData` as a client may have left it).
    pub fn from_secret(secret: &Secret) -> Self {
        let mut data = BTreeMap::new();
        for (key, value) in secret.data.iter().flatten() {
            if KEPT.contains(&key.as_str()) {
                data.insert(key.clone(), value.0.clone());
            }
        }
        for (key, value) in secret.string_data.iter().flatten() {
            if KEPT.contains(&key.as_str()) {
                data.entry(key.clone())
                    .or_insert_with(|| value.as_bytes().to_vec());
            }
        }
        CredentialSecret { data }
    }

    fn value(&self, key: &str) -> Option<&[u8]> {
        self.data
            .get(key)
            .map(Vec::as_slice)
            .filter(|v| !v.is_empty())
    }

    /// `(certificate chain, private key)`: the generic keys first, then `kubernetes.io/tls`'s,
    /// as istiod reads them; the reason otherwise, naming the keys found.
    pub fn certificate_and_key(&self) -> Result<(&[u8], &[u8]), String> {
        for (cert, key) in [(GENERIC_CERT, GENERIC_KEY), (TLS_CERT, TLS_KEY)] {
            if let (Some(cert), Some(key)) = (self.value(cert), self.value(key)) {
                return Ok((cert, key));
            }
        }
        for (cert, key) in [(GENERIC_CERT, GENERIC_KEY), (TLS_CERT, TLS_KEY)] {
            if self.data.contains_key(cert) && self.data.contains_key(key) {
                return Err(format!("keys {cert:?} and {key:?} are empty"));
            }
        }
        Err(format!(
            "no {GENERIC_CERT:?} and {GENERIC_KEY:?}, nor {TLS_CERT:?} and {TLS_KEY:?} (found: {})",
            self.found()
        ))
    }

    /// The CA certificates (`cacert`, else `ca.crt`).
    pub fn ca(&self) -> Result<&[u8], String> {
        self.value(GENERIC_CA)
            .or_else(|| self.value(TLS_CA))
            .ok_or_else(|| format!("no {GENERIC_CA:?} nor {TLS_CA:?} (found: {})", self.found()))
    }

    /// The certificate revocation list beside the CA [`ca`](Self::ca) returns, if any: `crl`
    /// with `cacert`, `ca.crl` with `ca.crt`, as istiod's `extractRoot` pairs them.
    pub fn crl(&self) -> Option<&[u8]> {
        if self.value(GENERIC_CA).is_some() {
            self.value(GENERIC_CRL)
        } else {
            self.value(TLS_CRL)
        }
    }

    fn found(&self) -> String {
        if self.data.is_empty() {
            return "no credential key".to_owned();
        }
        self.data.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_revocation_list_goes_with_the_ca_of_its_layout() {
        let read = |pairs: &[(&str, &str)]| {
            let credential = CredentialSecret::from_secret(&secret(pairs));
            (
                credential
                    .ca()
                    .ok()
                    .map(|c| String::from_utf8(c.to_vec()).unwrap()),
                credential
                    .crl()
                    .map(|c| String::from_utf8(c.to_vec()).unwrap()),
            )
        };
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            read(&[("ca.crt", "A"), ("ca.crl", "R")]),
            (some("A"), some("R"))
        );
        assert_eq!(
            read(&[("cacert", "A"), ("crl", "R")]),
            (some("A"), some("R"))
        );
        // The generic CA wins, and with it the generic list only.
        assert_eq!(
            read(&[("cacert", "A"), ("ca.crt", "B"), ("ca.crl", "R")]),
            (some("A"), None)
        );
        assert_eq!(read(&[("ca.crt", "A")]), (some("A"), None));
    }

    #[test]
    fn both_layouts_are_read_as_istio_reads_them() {
        type Case<'a> = (
            &'a str,
            &'a [(&'a str, &'a str)],
            Result<(&'a str, &'a str), &'a str>,
        );
        let cases: [Case; 5] = [
            (
                "kubernetes.io/tls",
                &[("tls.crt", "C"), ("tls.key", "K")],
                Ok(("C", "K")),
            ),
            ("generic", &[("cert", "C"), ("key", "K")], Ok(("C", "K"))),
            (
                "generic wins over tls",
                &[
                    ("cert", "G"),
                    ("key", "GK"),
                    ("tls.crt", "C"),
                    ("tls.key", "K"),
                ],
                Ok(("G", "GK")),
            ),
            (
                "empty values",
                &[("tls.crt", ""), ("tls.key", "")],
                Err("are empty"),
            ),
            (
                "other keys",
                &[("password", "x")],
                Err("found: no credential key"),
            ),
        ];
        for (case, pairs, expected) in cases {
            let credential = CredentialSecret::from_secret(&secret(pairs));
            match (credential.certificate_and_key(), expected) {
                (Ok((cert, key)), Ok((c, k))) => {
                    assert_eq!((cert, key), (c.as_bytes(), k.as_bytes()), "{case}");
                }
                (Err(error), Err(needle)) => assert!(error.contains(needle), "{case}: {error}"),
                (got, _) => panic!("{case}: {got:?}"),
            }
        }
        let ca = CredentialSecret::from_secret(&secret(&[("ca.crt", "A")]));
        assert_eq!(ca.ca().unwrap(), b"A");
        assert!(CredentialSecret::default().ca().is_err());
        // Keys the mesh does not read are never kept, and never printed.
        let kept = CredentialSecret::from_secret(&secret(&[("tls.key", "K"), ("token", "T")]));
        assert_eq!(format!("{kept:?}"), r#"{"tls.key"}"#);
    }
}
