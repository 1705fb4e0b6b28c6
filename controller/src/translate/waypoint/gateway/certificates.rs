//! Where an Istio Gateway server's certificates come from, as istiod builds the listener's TLS
//! context (`buildGatewayListenerTLSContext`): `credentialName` or `credentialNames` first (each
//! a Secret served over SDS; MUTUAL's CA is the first one's `-cacert`), else the files the
//! server names in the gateway's pod (`serverCertificate` and `privateKey`, or each of
//! `tlsCertificates`, with `caCertificates` and `caCrl`).

use weft_proto::waypoint as wp;

use crate::model::networking::ServerTlsSettings;
use crate::translate::credentials;

/// A terminating server's certificates.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ServerCertificates {
    /// The first credential's name and SDS resource (empty with files).
    pub credential_name: String,
    pub credential_resource: String,
    pub additional: Vec<wp::GatewayCredential>,
    pub files: Option<wp::GatewayTlsFiles>,
}

/// The certificates of `tls` for a gateway pod in `pod_namespace`; `None` when it names none.
pub(super) fn server_certificates(
    tls: &ServerTlsSettings,
    pod_namespace: &str,
) -> Option<ServerCertificates> {
    let set = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let named: Vec<String> = match set(&tls.credential_name) {
        Some(name) => vec![name],
        None => tls
            .credential_names()
            .iter()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect(),
    };
    if let Some((first, rest)) = named.split_first() {
        return Some(ServerCertificates {
            credential_name: first.clone(),
            credential_resource: credentials::istio_resource(pod_namespace, first),
            additional: rest
                .iter()
                .map(|name| wp::GatewayCredential {
                    name: name.clone(),
                    resource: credentials::istio_resource(pod_namespace, name),
                })
                .collect(),
            files: None,
        });
    }
    let pairs: Vec<(Option<String>, Option<String>)> = if tls.tls_certificates().is_empty() {
        vec![(set(&tls.server_certificate), set(&tls.private_key))]
    } else {
        tls.tls_certificates()
            .iter()
            .map(|c| (set(&c.server_certificate), set(&c.private_key)))
            .collect()
    };
    let certificates = pairs
        .into_iter()
        .map(|pair| match pair {
            (Some(certificate_chain), Some(private_key)) => Some(wp::GatewayCertificateFiles {
                certificate_chain,
                private_key,
            }),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(ServerCertificates {
        files: Some(wp::GatewayTlsFiles {
            certificates,
            ca_certificates: set(&tls.ca_certificates).unwrap_or_default(),
            ca_crl: set(&tls.ca_crl).unwrap_or_default(),
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(yaml: &str) -> ServerTlsSettings {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn credentials_come_before_files_as_istiod_chooses() {
        let names = server_certificates(&tls("{credentialNames: [rsa, ecdsa]}"), "edge").unwrap();
        assert_eq!(names.credential_name, "rsa");
        assert_eq!(names.credential_resource, "kubernetes://edge/rsa");
        assert_eq!(
            names.additional,
            [wp::GatewayCredential {
                name: "ecdsa".to_owned(),
                resource: "kubernetes://edge/ecdsa".to_owned(),
            }]
        );
        let one = server_certificates(&tls("{credentialName: c, serverCertificate: /c}"), "edge");
        assert_eq!(one.unwrap().credential_name, "c");

        let files = server_certificates(
            &tls("{serverCertificate: /etc/c.pem, privateKey: /etc/k.pem, caCertificates: /etc/ca.pem}"),
            "edge",
        )
        .unwrap();
        assert_eq!(
            files.files,
            Some(wp::GatewayTlsFiles {
                certificates: vec![wp::GatewayCertificateFiles {
                    certificate_chain: "/etc/c.pem".to_owned(),
                    private_key: "/etc/k.pem".to_owned(),
                }],
                ca_certificates: "/etc/ca.pem".to_owned(),
                ca_crl: String::new(),
            })
        );
        let pair = server_certificates(
            &tls("{tlsCertificates: [{serverCertificate: /r.pem, privateKey: /rk.pem}, {serverCertificate: /e.pem, privateKey: /ek.pem}]}"),
            "edge",
        )
        .unwrap();
        assert_eq!(pair.files.unwrap().certificates.len(), 2);
        assert_eq!(
            server_certificates(&tls("{serverCertificate: /c}"), "edge"),
            None
        );
        assert_eq!(server_certificates(&tls("{}"), "edge"), None);
    }
}
