//! Istio's Gateway: `ValidateGateway`, `validateServer`, `validateTLSOptions` (`validation.go`),
//! `ValidateNamespaceSlashWildcardHostname` (`agent/validation.go`) and the CRD's rules.

use super::*;

fn gw(spec: &str) -> String {
    doc(NET, "Gateway", spec)
}

/// One server on 443 (HTTPS) with the given TLS settings.
fn https(tls: &str) -> String {
    gw(&format!(
        "{{servers: [{{port: {{number: 443, name: https, protocol: HTTPS}}, hosts: [a.example.com], tls: {tls}}}]}}"
    ))
}

#[test]
fn gateway_rules() {
    run(&[
        ok("https", "ValidateGateway", gw("{selector: {istio: ingressgateway}, servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['bookinfo/*.example.com'], tls: {mode: SIMPLE, credentialName: bookinfo-cert}}]}")),
        ok("star host", "validateSidecarOrGatewayHostnamePart: * alone", gw("{servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}")),
        ok("http with https redirect", "validateServer: IsPassThroughServer", gw("{servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [a.example.com], tls: {httpsRedirect: true}}]}")),
        ok("two credential names", "validateTLSOptions: credentialNames", https("{mode: SIMPLE, credentialNames: [rsa, ecdsa]}")),
        bad("credential name and names", "validateTLSOptions: only one certificate source; CRD rule", https("{mode: SIMPLE, credentialName: a, credentialNames: [b]}"), "spec.servers[0].tls", "only one of credential_name, credential_names"),
        bad("files and credential name", "validateTLSOptions: only one certificate source", https("{mode: SIMPLE, credentialName: a, serverCertificate: /c, privateKey: /k}"), "spec.servers[0].tls", "only one of credential_name"),
        bad("credential names and certificates", "validateTLSOptions; CRD rule", https("{mode: SIMPLE, credentialNames: [a], tlsCertificates: [{serverCertificate: /c, privateKey: /k}]}"), "spec.servers[0].tls", "only one of credential_name"),
        bad("simple without a certificate", "validateTLSOptions: SIMPLE TLS requires a server certificate", https("{mode: SIMPLE, privateKey: /k}"), "spec.servers[0].tls.serverCertificate", "SIMPLE TLS requires a server certificate"),
        bad("mutual without CA", "validateTLSOptions: MUTUAL TLS requires a client CA bundle", https("{mode: MUTUAL, serverCertificate: /c, privateKey: /k}"), "spec.servers[0].tls.caCertificates", "requires a client CA bundle"),
        bad("istio mutual with certificate", "validateTLSOptions: ISTIO_MUTUAL", https("{mode: ISTIO_MUTUAL, serverCertificate: /c}"), "spec.servers[0].tls.serverCertificate", "ISTIO_MUTUAL TLS cannot have associated server certificate"),
        warns("passthrough with certificates", "validateTLSOptions: warning", gw("{servers: [{port: {number: 443, name: tls, protocol: TLS}, hosts: [a.example.com], tls: {mode: PASSTHROUGH, credentialName: c}}]}"), "spec.servers[0].tls", "does not use certificates"),
        bad("crl with simple", "validateTLSOptions: CRL is not supported with SIMPLE TLS", https("{mode: SIMPLE, serverCertificate: /c, privateKey: /k, caCrl: /crl}"), "spec.servers[0].tls.caCrl", "CRL is not supported with SIMPLE TLS"),
        warns("old tls without ciphers", "validateTLSOptions: warning", https("{mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV1_1}"), "spec.servers[0].tls.minProtocolVersion", "require setting compatible ciphers"),
        warns("unknown cipher", "validateTLSOptions: ignoring invalid cipher suites", https("{mode: SIMPLE, credentialName: c, cipherSuites: [NOT-A-CIPHER]}"), "spec.servers[0].tls.cipherSuites", "ignoring invalid cipher suites"),
        warns("redirect on a non-http server", "ValidateGateway: httpsRedirect warning", gw("{servers: [{port: {number: 443, name: tls, protocol: TLS}, hosts: [a.example.com], tls: {mode: PASSTHROUGH, httpsRedirect: true}}]}"), "spec.servers[0].tls.httpsRedirect", "should only be used with http servers"),
        bad("https without tls", "validateServer", gw("{servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.example.com]}]}"), "spec.servers[0].tls", "must have TLS settings"),
        bad("tcp with tls", "validateServer: TLS settings for non HTTPS/TLS ports", gw("{servers: [{port: {number: 31400, name: tcp, protocol: TCP}, hosts: ['*'], tls: {mode: SIMPLE, credentialName: c}}]}"), "spec.servers[0].tls", "non HTTPS/TLS ports"),
        bad("short host", "validateSidecarOrGatewayHostnamePart: short names", gw("{servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [reviews]}]}"), "spec.servers[0].hosts[0]", "short names"),
        bad("partial wildcard host", "ValidatePartialWildCard: an error in Gateway", gw("{servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*foo.example.com']}]}"), "spec.servers[0].hosts[0]", "partial wildcard"),
        bad("bad host namespace", "ValidateNamespaceSlashWildcardHostname", gw("{servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['a_b/x.example.com']}]}"), "spec.servers[0].hosts[0]", "invalid namespace value"),
        ok("ip host", "validateSidecarOrGatewayHostnamePart: IPs allowed in gateways", gw("{servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [10.0.0.1]}]}")),
        bad("target port", "validateServerPort: targetPort has no impact on Gateways", gw("{servers: [{port: {number: 80, name: http, protocol: HTTP, targetPort: 8080}, hosts: [a.example.com]}]}"), "spec.servers[0].port.targetPort", "no impact on Gateways"),
        bad("bad protocol", "validateServerPort: protocol.Parse", gw("{servers: [{port: {number: 80, name: x, protocol: HBONE}, hosts: [a.example.com]}]}"), "spec.servers[0].port.protocol", "invalid protocol"),
        bad("duplicate port names", "ValidateGateway: port names unique", gw("{servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [a.example.com]}, {port: {number: 81, name: http, protocol: HTTP}, hosts: [b.example.com]}]}"), "spec.servers[1].port.name", "must be unique"),
        bad("bad tls mode", "CRD enum", https("{mode: SOMETIMES}"), "spec.servers[0].tls.mode", "unknown variant `SOMETIMES`"),
        bad("no servers", "ValidateGateway", gw("{}"), "spec.servers", "at least one server"),
        bad("unix bind with a port", "validateServerBind", gw("{servers: [{port: {number: 80, name: http, protocol: HTTP}, bind: 'unix:///s.sock', hosts: [a.example.com]}]}"), "spec.servers[0].port.number", "must be 0 for unix domain socket"),
        bad("dotted name", "ValidateGateway: name is a DNS label", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: a.b, namespace: ns}\nspec: {servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}\n".to_owned(), "metadata.name", "invalid gateway name"),
        ok("served by gateway proxies", "Gateway", gw("{servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}")),
        // Applied by gateway proxies: no "not applied" warning.
        applied("credential names applied", "validateTLSOptions: credentialNames (up to two, RSA and ECDSA)", https("{mode: SIMPLE, credentialNames: [rsa, ecdsa]}")),
        applied("client SANs applied", "validateTLSOptions: MUTUAL with subjectAltNames", https("{mode: MUTUAL, credentialName: c, subjectAltNames: [spiffe://example.org/ns/shop/sa/buyer]}")),
        applied("file-mounted certificate applied", "validateTLSOptions: SIMPLE TLS requires a server certificate and a private key", https("{mode: SIMPLE, serverCertificate: /etc/certs/tls.crt, privateKey: /etc/certs/tls.key}")),
        applied("file-mounted mutual applied", "validateTLSOptions: MUTUAL TLS requires a client CA bundle", https("{mode: MUTUAL, serverCertificate: /etc/certs/tls.crt, privateKey: /etc/certs/tls.key, caCertificates: /etc/certs/ca.crt}")),
        applied("tls certificates applied", "validateTLSOptions: tlsCertificates (SIMPLE TLS can support up to 2 server certificates)", https("{mode: SIMPLE, tlsCertificates: [{serverCertificate: /r.crt, privateKey: /r.key}, {serverCertificate: /e.crt, privateKey: /e.key}]}")),
        bad("istio mutual with credential names", "validateTLSOptions: ISTIO_MUTUAL TLS cannot have associated credentialNames", https("{mode: ISTIO_MUTUAL, credentialNames: [a]}"), "spec.servers[0].tls.credentialNames", "ISTIO_MUTUAL TLS cannot have associated credentialNames"),
        bad("three credential names", "CRD: credentialNames maxItems 2", https("{mode: SIMPLE, credentialNames: [a, b, c]}"), "spec.servers[0].tls.credentialNames", "one or two are allowed"),
        bad("no credential names", "CRD: credentialNames minItems 1", https("{mode: SIMPLE, credentialNames: []}"), "spec.servers[0].tls.credentialNames", "one or two are allowed"),
        applied("client pins applied", "ApplyCredentialSDSToServerCommonTLSContext: MUTUAL's verifyCertificateSpki and verifyCertificateHash", https("{mode: MUTUAL, credentialName: c, verifyCertificateSpki: ['AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='], verifyCertificateHash: ['AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89']}")),
        warns("client pins on simple", "ApplyCredentialSDSToServerCommonTLSContext: pins for MUTUAL and OPTIONAL_MUTUAL only", https("{mode: SIMPLE, credentialName: c, verifyCertificateHash: ['abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789']}"), "spec.servers[0].tls.verifyCertificateHash", "MUTUAL and OPTIONAL_MUTUAL servers only"),
        bad("short hash pin", "Envoy: Invalid hex-encoded SHA-256", https("{mode: MUTUAL, credentialName: c, verifyCertificateHash: ['ab:cd']}"), "spec.servers[0].tls.verifyCertificateHash[0]", "not a hex-encoded SHA-256 digest"),
        bad("spki pin not base64", "Envoy: Invalid base64-encoded SHA-256", https("{mode: OPTIONAL_MUTUAL, credentialName: c, verifyCertificateSpki: ['not base64!']}"), "spec.servers[0].tls.verifyCertificateSpki[0]", "not a base64-encoded SHA-256 digest"),
        warns("ca cert credential name not applied", "ApplyCredentialSDSToServerCommonTLSContext: caCertCredentialName", https("{mode: MUTUAL, credentialName: c, caCertCredentialName: client-ca}"), "spec.servers[0].tls.caCertCredentialName", crate::validation::NOT_APPLIED),
        warns("tls mode not served", "Gateway", gw("{servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: AUTO_PASSTHROUGH}}]}"), "spec.servers[0].tls.mode", crate::validation::NOT_APPLIED),
    ]);
}
