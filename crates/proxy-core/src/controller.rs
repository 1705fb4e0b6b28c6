//! How a proxy reaches the controller: the credential it presents (a node's bootstrap token in
//! local mode, a projected service-account token in Kubernetes, read anew for every request as
//! the kubelet rotates it in place), the roots that verify the controller's TLS ports, and from
//! them the CA client and the xDS target. The same credential admits the discovery stream.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use weft_identity::{CaToken, TlsConfigError, TrustRoots};
use weft_xds::{Target, TokenSource};

use crate::certificates::GrpcCaClient;

/// What a proxy's access to the controller could not be set up with.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("trust roots in {0}: {1}")]
    Roots(PathBuf, #[source] TlsConfigError),
    #[error("{0}")]
    Ca(String),
    #[error("xDS address {0}: {1}")]
    Xds(String, #[source] weft_xds::ClientError),
}

/// The credential and the roots a proxy talks to the controller with.
#[derive(Debug, Clone)]
pub struct ControllerAccess {
    pub token: CaToken,
    /// PEM roots that verify an `https://` controller and, when set, the mesh's peers instead
    /// of the root the CA returns.
    pub roots_pem: Option<String>,
    roots_file: Option<PathBuf>,
}

impl ControllerAccess {
    /// The token in `token_file` (read now to fail early, and again for every request) and the
    /// roots in `root_cert_file`.
    pub fn from_files(
        token_file: &Path,
        root_cert_file: Option<&Path>,
    ) -> Result<Self, ControllerError> {
        std::fs::read_to_string(token_file)
            .map_err(|e| ControllerError::Read(token_file.to_path_buf(), e))?;
        Self::with_token(CaToken::File(token_file.to_path_buf()), root_cert_file)
    }

    /// `token`, and the roots in `root_cert_file`.
    pub fn with_token(
        token: CaToken,
        root_cert_file: Option<&Path>,
    ) -> Result<Self, ControllerError> {
        let roots_pem = root_cert_file
            .map(|path| {
                std::fs::read_to_string(path)
                    .map_err(|e| ControllerError::Read(path.to_path_buf(), e))
            })
            .transpose()?;
        Ok(Self {
            token,
            roots_pem,
            roots_file: root_cert_file.map(Path::to_path_buf),
        })
    }

    /// The configured roots, parsed: what verifies peers instead of the CA's root.
    pub fn trust_roots(&self) -> Result<Option<TrustRoots>, ControllerError> {
        match (&self.roots_pem, &self.roots_file) {
            (Some(pem), Some(path)) => TrustRoots::from_pem(pem)
                .map(Some)
                .map_err(|e| ControllerError::Roots(path.clone(), e)),
            _ => Ok(None),
        }
    }

    /// The CA at `address`, called with this credential on behalf of `node`.
    pub fn ca_client(
        &self,
        address: &str,
        node: Option<String>,
    ) -> Result<GrpcCaClient, ControllerError> {
        GrpcCaClient::connect(address, self.roots_pem.as_deref(), self.token.clone(), node)
            .map_err(ControllerError::Ca)
    }

    /// The xDS server at `address`.
    pub fn xds_target(&self, address: &str) -> Result<Target, ControllerError> {
        Target::for_uri(address, self.roots_pem.as_deref())
            .map_err(|e| ControllerError::Xds(address.to_owned(), e))
    }

    /// The credential for every (re)connect of the discovery stream.
    pub fn bearer_token(&self) -> TokenSource {
        let token = self.token.clone();
        Arc::new(move || token.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_is_read_for_every_connection_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("weft-controller-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        let missing = dir.join("missing");
        let error = ControllerAccess::from_files(&missing, None).unwrap_err();
        assert!(
            error.to_string().contains(&missing.display().to_string()),
            "{error}"
        );

        std::fs::write(&token, "first\n").unwrap();
        let access = ControllerAccess::from_files(&token, None).unwrap();
        assert!(access.trust_roots().unwrap().is_none());
        let bearer = access.bearer_token();
        assert_eq!(bearer().unwrap(), "first");
        // A projected token is rotated in place: the next (re)connect sends the new one.
        std::fs::write(&token, "second\n").unwrap();
        assert_eq!(bearer().unwrap(), "second");
        // An https:// controller is verified against configured roots only.
        assert!(access.xds_target("https://istiod:15012").is_err());
        assert!(access.ca_client("https://istiod:15012", None).is_err());

        let roots = dir.join("roots.pem");
        std::fs::write(&roots, "not a certificate").unwrap();
        let access = ControllerAccess::from_files(&token, Some(&roots)).unwrap();
        let error = access.trust_roots().unwrap_err().to_string();
        assert!(error.contains("roots.pem"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
