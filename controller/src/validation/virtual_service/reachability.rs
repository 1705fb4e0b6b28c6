//! Rules no request can reach and matches that can never win, as Istio's
//! `analyzeUnreachable{HTTP,TCP,TLS}Rules` find them: warnings with the codes
//! `VirtualServiceUnreachableRule` (IST0130) and `VirtualServiceIneffectiveMatch` (IST0131).

use std::collections::BTreeMap;

use crate::model::networking::*;
use crate::validation::{Findings, codes};

fn route_name(route_name: Option<&str>, index: usize) -> String {
    match route_name {
        Some(name) if !name.is_empty() => format!("{name:?}"),
        _ => format!("#{index}"),
    }
}

fn unreachable(findings: &mut Findings, path: &str, rule: &str, reason: &str) {
    findings.warn_code(
        path,
        codes::VIRTUAL_SERVICE_UNREACHABLE_RULE,
        format!("virtualService rule {rule} not used ({reason})"),
    );
}

fn ineffective(findings: &mut Findings, path: &str, rule: &str, matched: &str, by: &str) {
    findings.warn_code(
        path,
        codes::VIRTUAL_SERVICE_INEFFECTIVE_MATCH,
        format!(
            "virtualService rule {rule} match {matched} is not used (duplicate/overlapping match in rule {by})"
        ),
    );
}

pub fn report(findings: &mut Findings, spec: &VirtualServiceSpec) {
    let http: Vec<_> = spec
        .http
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let matches: Vec<HttpMatchRequest> = r
                .matches
                .iter()
                .map(|m| HttpMatchRequest {
                    name: None,
                    ..m.clone()
                })
                .collect();
            (route_name(r.name.as_deref(), i), matches, r)
        })
        .collect();
    rules(findings, "spec.http", &http, |r, j| {
        route_name(r.matches[j].name.as_deref(), j)
    });
    overlapping_prefixes(findings, &http);
    let tcp: Vec<_> = spec
        .tcp
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("#{i}"), r.matches.clone(), r))
        .collect();
    rules(findings, "spec.tcp", &tcp, |_, j| format!("#{j}"));
    let tls: Vec<_> = spec
        .tls
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("#{i}"), r.matches.clone(), r))
        .collect();
    rules(findings, "spec.tls", &tls, |_, j| format!("#{j}"));
}

/// Rules after one without matches, and rules whose every match an earlier rule has.
fn rules<M: PartialEq, R>(
    findings: &mut Findings,
    field: &str,
    routes: &[(String, Vec<M>, &R)],
    match_name: impl Fn(&R, usize) -> String,
) {
    let mut catch_all_seen = false;
    let mut seen: Vec<(&M, usize)> = Vec::new();
    for (i, (name, matches, route)) in routes.iter().enumerate() {
        let path = format!("{field}[{i}]");
        if matches.is_empty() {
            if catch_all_seen {
                unreachable(
                    findings,
                    &path,
                    name,
                    "only the last rule can have no matches",
                );
            }
            catch_all_seen = true;
            continue;
        }
        let mut duplicates = 0;
        for (j, m) in matches.iter().enumerate() {
            if catch_all_seen {
                unreachable(
                    findings,
                    &path,
                    name,
                    "route without matches defined before",
                );
                continue;
            }
            if let Some((_, earlier)) = seen.iter().find(|(s, _)| *s == m) {
                ineffective(
                    findings,
                    &format!("{path}.match[{j}]"),
                    name,
                    &match_name(route, j),
                    &routes[*earlier].0,
                );
                duplicates += 1;
                continue;
            }
            seen.push((m, i));
        }
        if duplicates == matches.len() {
            unreachable(findings, &path, name, "all matches used by prior rules");
        }
    }
}

/// One URI-prefix match, reduced to what Istio's overlap check compares.
struct PrefixMatch {
    path: String,
    route: String,
    name: String,
    prefix: String,
    port: u32,
    method: String,
    authority: String,
    headers: BTreeMap<String, String>,
    query_params: BTreeMap<String, String>,
    without_headers: BTreeMap<String, String>,
}

fn exact_or_prefix(value: Option<&StringMatch>) -> String {
    match value {
        Some(StringMatch { exact: Some(e), .. }) if !e.is_empty() => format!("exact:{e}"),
        Some(StringMatch {
            prefix: Some(p), ..
        }) if !p.is_empty() => format!("prefix:{p}"),
        _ => String::new(),
    }
}

fn reduce(map: &BTreeMap<String, StringMatch>) -> BTreeMap<String, String> {
    map.iter()
        .map(|(k, v)| (k.clone(), exact_or_prefix(Some(v))))
        .collect()
}

/// Istio's `coveredValidation`: whether `a`'s prefix match covers every request of `b`'s.
fn covers(a: &PrefixMatch, b: &PrefixMatch) -> bool {
    let covered = |va: &str, vb: &str| va == vb || va.starts_with(vb);
    let maps = |ma: &BTreeMap<String, String>, mb: &BTreeMap<String, String>| {
        ma.len() == mb.len()
            && ma
                .iter()
                .all(|(k, va)| mb.get(k).is_some_and(|vb| covered(va, vb)))
    };
    b.prefix.starts_with(&a.prefix)
        && a.port == b.port
        && covered(&a.method, &b.method)
        && covered(&a.authority, &b.authority)
        && maps(&a.headers, &b.headers)
        && maps(&a.query_params, &b.query_params)
        && maps(&a.without_headers, &b.without_headers)
}

/// Istio's prefix-overlap check: a later URI prefix match that an earlier, shorter prefix with
/// the same other conditions already takes.
fn overlapping_prefixes(
    findings: &mut Findings,
    routes: &[(String, Vec<HttpMatchRequest>, &HttpRoute)],
) {
    let mut prefixes = Vec::new();
    let mut seen: Vec<&HttpMatchRequest> = Vec::new();
    let mut catch_all_seen = false;
    for (i, (name, matches, route)) in routes.iter().enumerate() {
        if catch_all_seen {
            break;
        }
        catch_all_seen = matches.is_empty();
        for (j, m) in matches.iter().enumerate() {
            if seen.contains(&m) {
                continue;
            }
            seen.push(m);
            let Some(prefix) = m
                .uri
                .as_ref()
                .and_then(|u| u.prefix.clone())
                .filter(|p| !p.is_empty())
            else {
                continue;
            };
            let method = match exact_or_prefix(m.method.as_ref()) {
                method if method.is_empty() => "exact:GET".to_owned(),
                method => method,
            };
            prefixes.push(PrefixMatch {
                path: format!("spec.http[{i}].match[{j}]"),
                route: name.clone(),
                name: route_name(route.matches[j].name.as_deref(), j),
                prefix,
                port: m.port.unwrap_or(0),
                method,
                authority: exact_or_prefix(m.authority.as_ref()),
                headers: reduce(&m.headers),
                query_params: reduce(&m.query_params),
                without_headers: reduce(&m.without_headers),
            });
        }
    }
    for (k, earlier) in prefixes.iter().enumerate() {
        for later in &prefixes[k + 1..] {
            if later.prefix != earlier.prefix && covers(earlier, later) {
                ineffective(
                    findings,
                    &later.path,
                    &later.route,
                    &format!("{} of prefix {}", later.name, later.prefix),
                    &format!(
                        "{} of prefix {} on {}",
                        earlier.name, earlier.prefix, earlier.route
                    ),
                );
            }
        }
    }
}
