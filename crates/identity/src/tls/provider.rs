//! The crypto of every TLS configuration: rustls's aws-lc-rs provider (ztunnel's), whose key
//! exchanges include the post-quantum hybrid X25519MLKEM768, chosen by Istio's
//! `COMPLIANCE_POLICY`.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use serde::Serialize;

/// The environment variable ztunnel reads its compliance policy from.
pub const COMPLIANCE_POLICY: &str = "COMPLIANCE_POLICY";

/// Which key exchanges this process offers and accepts (Istio's `COMPLIANCE_POLICY`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompliancePolicy {
    /// X25519MLKEM768 first, then X25519, P-256 and P-384: a post-quantum exchange with every
    /// peer that offers one, a classical one with any other.
    #[default]
    Default,
    /// X25519MLKEM768 only (`pqc`, as ztunnel): a peer without it is refused.
    Pqc,
}

/// A `COMPLIANCE_POLICY` value that names no policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compliance policy {0:?}: use pqc, or leave it unset")]
pub struct UnknownCompliancePolicy(pub String);

impl FromStr for CompliancePolicy {
    type Err = UnknownCompliancePolicy;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "" => Ok(Self::Default),
            "pqc" => Ok(Self::Pqc),
            other => Err(UnknownCompliancePolicy(other.to_owned())),
        }
    }
}

/// Set once, at start, before any TLS configuration is built.
static INSTALLED: OnceLock<CompliancePolicy> = OnceLock::new();

impl CompliancePolicy {
    /// Makes this the policy of every TLS configuration the process builds: ours, through
    /// [`crypto_provider`], and the libraries' (tonic's clients and servers to and from the
    /// controller, the Kubernetes client), through rustls's process-wide default provider,
    /// which they take when one is installed. A process has one policy: installing another
    /// after the first is refused (it would leave configurations built before it on the old
    /// one).
    pub fn install(self) -> Result<(), CompliancePolicy> {
        let installed = *INSTALLED.get_or_init(|| {
            // Fails only if something installed a default first; then ours stays the only
            // provider built under the policy, and that one is the first the process builds.
            let _ = self.provider().install_default();
            self
        });
        if installed == self {
            Ok(())
        } else {
            Err(installed)
        }
    }

    /// The installed policy; [`CompliancePolicy::Default`] when none was.
    pub fn current() -> Self {
        INSTALLED.get().copied().unwrap_or_default()
    }

    /// The key exchanges offered (in order of preference) and accepted.
    pub fn kx_groups(self) -> Vec<&'static dyn SupportedKxGroup> {
        match self {
            Self::Default => vec![
                kx_group::X25519MLKEM768,
                kx_group::X25519,
                kx_group::SECP256R1,
                kx_group::SECP384R1,
            ],
            Self::Pqc => vec![kx_group::X25519MLKEM768],
        }
    }

    /// The aws-lc-rs provider with this policy's key exchanges.
    pub fn provider(self) -> CryptoProvider {
        CryptoProvider {
            kx_groups: self.kx_groups(),
            ..aws_lc_rs::default_provider()
        }
    }
}

/// Makes the installed policy's provider (the default policy's when none was installed) rustls's
/// process-wide default, unless one is already. The libraries that build their own TLS
/// (tonic's clients and servers, the kube client) take the default, and cannot choose one
/// themselves in this workspace: rustls is built with both aws-lc-rs and ring (the Gateway API
/// crate asks kube for ring). Call before building one of them; [`CompliancePolicy::install`]
/// does it too.
pub fn install_default_provider() {
    if CryptoProvider::get_default().is_none() {
        let _ = CompliancePolicy::current().provider().install_default();
    }
}

/// The crypto provider of every TLS configuration, under the installed policy.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(CompliancePolicy::current().provider())
}
