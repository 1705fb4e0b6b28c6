//! ServiceEntry and WorkloadEntry: Istio's `ValidateServiceEntry`, `validateWorkloadEntry`
//! (`validation.go`) and the CRDs' rules.

use super::*;

fn se(spec: &str) -> String {
    doc(NET, "ServiceEntry", spec)
}

fn we(spec: &str) -> String {
    doc(NET, "WorkloadEntry", spec)
}

#[test]
fn service_entry_rules() {
    run(&[
        ok(
            "external dns",
            "ValidateServiceEntry",
            se(
                "{hosts: [api.example.com], ports: [{number: 443, name: https, protocol: TLS}], location: MESH_EXTERNAL, resolution: DNS}",
            ),
        ),
        ok(
            "static endpoints",
            "ValidateServiceEntry: STATIC",
            se(
                "{hosts: [db.internal], addresses: [10.1.0.0/16], ports: [{number: 5432, name: tcp, protocol: TCP}], resolution: STATIC, endpoints: [{address: 10.1.2.3, ports: {tcp: 5432}}]}",
            ),
        ),
        ok(
            "empty protocol is sniffed",
            "ValidateProtocol: empty means sniffing",
            se(
                "{hosts: [a.example.com], addresses: [240.0.0.1], ports: [{number: 80, name: web}], resolution: DNS}",
            ),
        ),
        ok(
            "upper case port name",
            "ValidatePortName: labels.IsDNS1123Label",
            se(
                "{hosts: [a.example.com], ports: [{number: 80, name: HTTP, protocol: HTTP}], resolution: DNS}",
            ),
        ),
        ok(
            "dynamic dns",
            "ValidateServiceEntry: DYNAMIC_DNS",
            se(
                "{hosts: ['*.example.com'], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DYNAMIC_DNS}",
            ),
        ),
        bad(
            "dynamic dns without a wildcard",
            "ValidateServiceEntry: DYNAMIC_DNS hosts",
            se(
                "{hosts: [a.example.com], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DYNAMIC_DNS}",
            ),
            "spec.hosts[0]",
            "host must be wildcarded",
        ),
        warns(
            "address unset with network",
            "validateWorkloadEntry: warning, not an error",
            se(
                "{hosts: [db.internal], addresses: [10.1.0.0/16], ports: [{number: 5432, name: tcp, protocol: TCP}], resolution: STATIC, endpoints: [{network: remote, ports: {tcp: 5432}}]}",
            ),
            "spec.endpoints[0].address",
            "address is unset with network",
        ),
        bad(
            "endpoint without address or network",
            "validateWorkloadEntry; CRD: Address is required",
            se(
                "{hosts: [db.internal], addresses: [10.1.0.0/16], ports: [{number: 5432, name: tcp, protocol: TCP}], resolution: STATIC, endpoints: [{ports: {tcp: 5432}}]}",
            ),
            "spec.endpoints[0].address",
            "address is required",
        ),
        bad(
            "endpoint port not declared",
            "validateWorkloadEntry: endpoint port not defined by the service entry",
            se(
                "{hosts: [db.internal], addresses: [10.1.0.0/16], ports: [{number: 5432, name: tcp, protocol: TCP}], resolution: STATIC, endpoints: [{address: 10.1.2.3, ports: {sql: 5432}}]}",
            ),
            "spec.endpoints[0].ports.sql",
            "endpoint port 5432 is not defined by the service entry",
        ),
        bad(
            "endpoint service account no Kubernetes ServiceAccount can have",
            "stricter than Istio: the account is a segment of the SPIFFE identity",
            se(
                "{hosts: [db.internal], addresses: [10.1.0.0/16], ports: [{number: 5432, name: tcp, protocol: TCP}], resolution: STATIC, endpoints: [{address: 10.1.2.3, serviceAccount: 'Db'}]}",
            ),
            "spec.endpoints[0].serviceAccount",
            "invalid service account name",
        ),
        bad(
            "dns endpoint port not declared",
            "ValidateServiceEntry: DNS endpoints",
            se(
                "{hosts: [a.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS, endpoints: [{address: b.example.com, ports: {web: 8080}}]}",
            ),
            "spec.endpoints[0].ports.web",
            "not defined by the service entry",
        ),
        bad(
            "dns round robin with two endpoints",
            "ValidateServiceEntry; CRD: DNS_ROUND_ROBIN mode cannot have multiple endpoints",
            se(
                "{hosts: [example.com], resolution: DNS_ROUND_ROBIN, endpoints: [{address: sub1.example.com}, {address: sub2.example.com}]}",
            ),
            "spec.endpoints",
            "only be 0 or 1 endpoint",
        ),
        bad(
            "none with endpoints",
            "CRD: NONE mode cannot set endpoints",
            se("{hosts: [example.com], endpoints: [{address: 1.2.3.4}], resolution: NONE}"),
            "spec.endpoints",
            "no endpoints should be provided",
        ),
        bad(
            "none with empty endpoints",
            "CRD: NONE mode cannot set endpoints (has())",
            se("{hosts: [example.com], endpoints: []}"),
            "spec.endpoints",
            "no endpoints should be provided",
        ),
        bad(
            "selector and endpoints",
            "ValidateServiceEntry; CRD: only one of WorkloadSelector or Endpoints",
            se("{hosts: [example.com], workloadSelector: {}, endpoints: [{address: 1.2.3.4}]}"),
            "spec.workloadSelector",
            "only one of WorkloadSelector or Endpoints",
        ),
        bad(
            "wildcard selector value",
            "ValidateAlphaWorkloadSelector",
            se("{hosts: [example.com], workloadSelector: {labels: {val: '*'}}}"),
            "spec.workloadSelector.labels.val",
            "wildcard is not supported",
        ),
        warns(
            "selector with resolution none",
            "ValidateServiceEntry: warning",
            se(
                "{hosts: [example.com], addresses: [10.0.0.1], workloadSelector: {labels: {app: a}}, ports: [{number: 80, name: http, protocol: HTTP}]}",
            ),
            "spec.workloadSelector",
            "should not be set when resolution mode is NONE",
        ),
        warns(
            "partial wildcard host",
            "ValidatePartialWildCard: a warning in ServiceEntry",
            se(
                "{hosts: ['*foo.example.com'], addresses: [10.0.0.1], ports: [{number: 80, name: http, protocol: HTTP}]}",
            ),
            "spec.hosts[0]",
            "partial wildcard",
        ),
        warns(
            "tcp port without addresses",
            "ValidateServiceEntry: addresses are required (IST0134)",
            se("{hosts: [a.example.com], ports: [{number: 3306, name: tcp, protocol: TCP}]}"),
            "spec.ports[0]",
            "addresses are required",
        ),
        bad(
            "no hosts",
            "ValidateServiceEntry; CRD: hosts minItems 1",
            se("{ports: [{number: 80, name: http}]}"),
            "spec.hosts",
            "at least one host",
        ),
        bad(
            "wildcard host",
            "ValidateServiceEntry; CRD: hostname cannot be wildcard",
            se("{hosts: ['*']}"),
            "spec.hosts[0]",
            "invalid host *",
        ),
        bad(
            "bad resolution enum",
            "CRD enum",
            se("{hosts: [a.example.com], resolution: DYNAMIC}"),
            "spec.resolution",
            "unknown variant `DYNAMIC`",
        ),
        bad(
            "duplicate port",
            "ValidateServiceEntry; CRD: port number cannot be duplicated",
            se(
                "{hosts: [a.example.com], ports: [{number: 80, name: http}, {number: 80, name: http2}]}",
            ),
            "spec.ports[1].number",
            "already defined",
        ),
        bad(
            "duplicate port name",
            "ValidateServiceEntry; CRD list-map key name",
            se("{hosts: [a.example.com], ports: [{number: 1, name: a}, {number: 12, name: a}]}"),
            "spec.ports[1].name",
            "already defined",
        ),
        bad(
            "port out of range",
            "ValidatePort; CRD: port must be between 1-65535",
            se("{hosts: [a.example.com], ports: [{number: 99999, name: a}]}"),
            "spec.ports[0].number",
            "must be in the range 1..65535",
        ),
        bad(
            "cidr with dns",
            "ValidateServiceEntry; CRD: CIDR only for NONE/STATIC",
            se("{hosts: [a.example.com], addresses: [10.0.0.0/8], resolution: DNS}"),
            "spec.addresses",
            "only for NONE/STATIC",
        ),
        bad(
            "bad protocol",
            "ValidateProtocol",
            se("{hosts: [a.example.com], ports: [{number: 80, name: http, protocol: HTTP3000}]}"),
            "spec.ports[0].protocol",
            "unsupported protocol",
        ),
        bad(
            "multiple hosts with tcp",
            "ValidateServiceEntry: multiple hosts with non-HTTP ports",
            se(
                "{hosts: [a.example.com, b.example.com], ports: [{number: 3306, name: tcp, protocol: TCP}], resolution: DNS}",
            ),
            "spec.ports",
            "multiple hosts provided with non-HTTP, non-TLS ports",
        ),
        bad(
            "dns without fqdn hosts",
            "ValidateServiceEntry: hosts must be FQDN",
            se(
                "{hosts: ['*.example.com'], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}",
            ),
            "spec.hosts[0]",
            "hosts must be FQDN",
        ),
        bad(
            "static endpoint not an ip",
            "validateWorkloadEntry: STATIC takes IPs",
            se(
                "{hosts: [db.internal], addresses: [10.1.0.0/16], ports: [{number: 5432, name: tcp, protocol: TCP}], resolution: STATIC, endpoints: [{address: db.example.com}]}",
            ),
            "spec.endpoints[0].address",
            "is not a valid IP address",
        ),
        bad(
            "unix endpoint with ports",
            "validateWorkloadEntry: unix endpoint must not include ports",
            se(
                "{hosts: [db.internal], addresses: [10.1.0.0/16], ports: [{number: 5432, name: tcp, protocol: TCP}], resolution: STATIC, endpoints: [{address: 'unix:///var/run/db.sock', ports: {tcp: 5432}}]}",
            ),
            "spec.endpoints[0].ports",
            "must not include ports",
        ),
        bad(
            "missing spec",
            "CRD: spec required",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: no-spec}\n"
                .to_owned(),
            "spec",
            "Required value",
        ),
        bad(
            "export to everyone and no one",
            "validateExportTo",
            se("{hosts: [a.example.com], exportTo: ['~', '*']}"),
            "spec.exportTo",
            "cannot have both public",
        ),
        ok(
            "export to no one",
            "validateExportTo: ~ for ServiceEntry",
            se("{hosts: [a.example.com], exportTo: ['~'], addresses: [10.0.0.1]}"),
        ),
        ok(
            "DNS resolution is applied",
            "ServiceEntry (Weft: node agents resolve the hosts)",
            se(
                "{hosts: [api.example.com], ports: [{number: 443, name: https, protocol: TLS}], resolution: DNS}",
            ),
        ),
        warns(
            "DYNAMIC_DNS partly applied",
            "ServiceEntry (Weft: mirrors to DYNAMIC_DNS hosts are not applied)",
            se(
                "{hosts: ['*.example.com'], ports: [{number: 443, name: https, protocol: TLS}], resolution: DYNAMIC_DNS}",
            ),
            "spec.resolution",
            crate::validation::NOT_APPLIED,
        ),
        ok(
            "STATIC endpoints are applied",
            "ServiceEntry (Weft: STATIC endpoints are mesh services' endpoints)",
            se(
                "{hosts: [api.example.com], addresses: [10.96.200.10], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 192.0.2.5}]}",
            ),
        ),
    ]);
}

#[test]
fn workload_entry_rules() {
    run(&[
        ok(
            "vm",
            "ValidateWorkloadEntry",
            we("{address: 10.0.0.5, ports: {http: 8080}, labels: {app: vm}, serviceAccount: vm}"),
        ),
        ok(
            "dns address",
            "ValidateWorkloadEntry allows FQDN addresses",
            we("{address: vm.example.com}"),
        ),
        warns(
            "network only",
            "validateWorkloadEntry: address unset with network",
            we("{network: remote}"),
            "spec.address",
            "address is unset with network",
        ),
        bad(
            "service account no Kubernetes ServiceAccount can have",
            "stricter than Istio: the account is a segment of the SPIFFE identity",
            we("{address: 10.0.0.5, serviceAccount: 'db{'}"),
            "spec.serviceAccount",
            "invalid service account name",
        ),
        bad(
            "nothing",
            "CRD: Address is required",
            we("{}"),
            "spec.address",
            "address is required",
        ),
        bad(
            "bad port name",
            "ValidatePortName; CRD: port name must be valid",
            we("{address: 10.0.0.5, ports: {'a_b': 8080}}"),
            "spec.ports.a_b",
            "invalid port name",
        ),
        bad(
            "port out of range",
            "ValidatePort; CRD",
            we("{address: 10.0.0.5, ports: {http: 70000}}"),
            "spec.ports.http",
            "must be in the range 1..65535",
        ),
        bad(
            "unix relative path",
            "ValidateUnixAddress; CRD: UDS must be an absolute path",
            we("{address: 'unix://relative.sock'}"),
            "spec.address",
            "not an absolute path",
        ),
        bad(
            "missing spec",
            "CRD: spec required",
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: no-spec}\n"
                .to_owned(),
            "spec",
            "Required value",
        ),
    ]);
}
