//! The Kubernetes and Gateway API kinds: what the mesh depends on, and the metadata rules every
//! object meets (Kubernetes' names and labels, the mesh's labels).

use super::*;

#[test]
fn kubernetes_rules() {
    run(&[
        ok("namespace ambient", "metadata labels", "apiVersion: v1\nkind: Namespace\nmetadata: {name: bookinfo, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}\n".to_owned()),
        bad("namespace bad dataplane mode", "istio.io/dataplane-mode values", "apiVersion: v1\nkind: Namespace\nmetadata: {name: bookinfo, labels: {istio.io/dataplane-mode: sidecar}}\n".to_owned(), "metadata.labels.istio.io/dataplane-mode", "unknown data plane mode"),
        bad("namespace bad name", "Kubernetes: DNS-1123 label, lower case", "apiVersion: v1\nkind: Namespace\nmetadata: {name: Book_Info}\n".to_owned(), "metadata.name", "invalid name"),
        bad("istio object with an upper-case name", "Kubernetes: custom resource names are DNS subdomains", doc(NET, "DestinationRule", "{host: a}").replace("name: t", "name: Reviews"), "metadata.name", "invalid name"),
        ok("service", "metadata labels", "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, labels: {istio.io/use-waypoint: waypoint}}\nspec: {selector: {app: reviews}, ports: [{name: http, port: 9080, targetPort: 9080}]}\n".to_owned()),
        bad("service port out of range", "Kubernetes: ports", "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {ports: [{name: http, port: 70000}]}\n".to_owned(), "spec.ports[0].port", "must be in the range 1..65535"),
        bad("service port wrong type", "Kubernetes schema", "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {ports: [{name: http, port: [1]}]}\n".to_owned(), "spec.ports[0].port", "invalid type"),
        bad("service bad waypoint label", "istio.io/use-waypoint", "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, labels: {istio.io/use-waypoint: Way.Point}}\nspec: {ports: [{port: 80}]}\n".to_owned(), "metadata.labels.istio.io/use-waypoint", "must be a DNS label"),
        ok("pod", "Kubernetes: pods", "apiVersion: v1\nkind: Pod\nmetadata: {name: reviews-v1-abc, labels: {app: reviews, version: v1}}\nspec: {serviceAccountName: bookinfo-reviews, containers: [{name: reviews, image: reviews:v1, ports: [{containerPort: 9080}]}]}\n".to_owned()),
        bad("pod without containers", "Kubernetes: pods", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n".to_owned(), "spec.containers", "at least one container"),
        bad("pod with an invalid service account", "Kubernetes: ValidateServiceAccountName", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {serviceAccountName: 'bookinfo-review{', containers: [{name: c, image: c}]}\n".to_owned(), "spec.serviceAccountName", "invalid service account name"),
        bad("pod with an upper-case deprecated service account", "Kubernetes: ValidateServiceAccountName", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {serviceAccount: Reviews, containers: [{name: c, image: c}]}\n".to_owned(), "spec.serviceAccount", "invalid service account name"),
        ok("service account", "Kubernetes", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: bookinfo-reviews}\n".to_owned()),
        ok("endpoint slice", "Kubernetes: EndpointSlices", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: reviews-abc}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.5]}]\nports: [{name: http, port: 9080}]\n".to_owned()),
        bad("endpoint slice bad address", "Kubernetes: EndpointSlices", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: reviews-abc}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.500]}]\n".to_owned(), "endpoints[0].addresses[0]", "not a valid IPv4 address"),
        ok("waypoint gateway", "Gateway API: Gateway", "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n".to_owned()),
        bad("waypoint gateway bad protocol", "Gateway API: protocol pattern", "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: 'not valid'}]}\n".to_owned(), "spec.listeners[0].protocol", "invalid protocol"),
        warns("ingress gateway", "Gateway API: class istio", "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: ingress}\nspec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}\n".to_owned(), "spec.gatewayClassName", crate::validation::NOT_APPLIED),
        ok("http route", "Gateway API: HTTPRoute (GAMMA)", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {parentRefs: [{group: '', kind: Service, name: reviews}], rules: [{matches: [{path: {type: PathPrefix, value: /}}], backendRefs: [{name: reviews-v1, port: 9080, weight: 90}, {name: reviews-v2, port: 9080, weight: 10}]}]}\n".to_owned()),
        warns("http route with a CORS filter", "Gateway API: HTTPRoute filters", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {parentRefs: [{group: '', kind: Service, name: reviews}], rules: [{filters: [{type: CORS, cors: {allowOrigins: ['https://a.example']}}], backendRefs: [{name: reviews, port: 9080}]}]}\n".to_owned(), "spec.rules[0].filters[0].type", crate::validation::NOT_APPLIED),
        ok("tcp route", "Gateway API: TCPRoute", "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: r}\nspec: {parentRefs: [{name: gw, sectionName: tcp}], rules: [{backendRefs: [{name: echo, port: 9000}]}]}\n".to_owned()),
        bad("http route schema", "Gateway API schema", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {rules: [{matches: [{path: {type: Regexish, value: /}}]}]}\n".to_owned(), "spec.rules[0].matches[0].path.type", "unknown variant"),
    ]);
}
