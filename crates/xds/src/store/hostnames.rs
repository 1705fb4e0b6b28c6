//! A subscription to a DNS name that nothing goes by is covered by the most specific wildcard
//! host covering it, as Istio's DNS proxy answers a name from the longest `*.<parent>` it
//! holds when it does not hold the name (`pkg/dns/client/dns.go`, `lookupHost`): an
//! on-demand proxy asks for the name a pod resolves, once, and the server finds the
//! wildcard ServiceEntry host that answers it, at any depth, in one round trip.
//!
//! The names are the controller's `host:<hostname>` aliases. The work per name is one index
//! lookup per label, and a name longer than a DNS name may be has no stand-in: a proxy cannot
//! make the server do more than [`MAX_HOSTNAME_LABELS`] lookups for one name.

use super::Snapshot;

/// The prefix of a subscription to a hostname.
pub const HOSTNAME_PREFIX: &str = "host:";

/// The longest DNS name (RFC 1035, 253 characters in text form): at most 127 labels.
pub const MAX_HOSTNAME_LEN: usize = 253;

/// Labels of the longest DNS name: the most wildcard lookups one name costs.
pub const MAX_HOSTNAME_LABELS: usize = MAX_HOSTNAME_LEN.div_ceil(2);

/// The wildcard aliases that may stand in for the hostname subscription `name`, most specific
/// first (`host:*.b.c`, `host:*.c` for `host:a.b.c`); none for a name that is no hostname
/// subscription or is longer than a DNS name.
pub fn wildcard_aliases(name: &str) -> impl Iterator<Item = String> + '_ {
    let hostname = name
        .strip_prefix(HOSTNAME_PREFIX)
        .filter(|hostname| hostname.len() <= MAX_HOSTNAME_LEN)
        .unwrap_or("");
    let mut rest = hostname;
    std::iter::from_fn(move || {
        let (_, parent) = rest.split_once('.')?;
        rest = parent;
        (!parent.is_empty()).then(|| format!("{HOSTNAME_PREFIX}*.{parent}"))
    })
}

impl Snapshot {
    /// The alias standing in for `name` in `type_url`: the most specific wildcard alias
    /// ([`wildcard_aliases`]) that a resource `accept`s goes by, when no resource `accept`s
    /// is covered by `name` itself. `None` when `name` covers something, or nothing covers it.
    pub fn stand_in(
        &self,
        type_url: &str,
        name: &str,
        accept: impl Fn(&super::StoredResource) -> bool,
    ) -> Option<String> {
        if !name.starts_with(HOSTNAME_PREFIX)
            || self.covering(type_url, name).iter().any(|r| accept(r))
        {
            return None;
        }
        wildcard_aliases(name)
            .find(|alias| self.covering(type_url, alias).iter().any(|r| accept(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wildcards_of_a_name_go_from_the_most_specific_and_stop_at_a_dns_name_length() {
        let all: Vec<String> = wildcard_aliases("host:a.b.example.com").collect();
        assert_eq!(
            all,
            ["host:*.b.example.com", "host:*.example.com", "host:*.com"]
        );
        assert_eq!(wildcard_aliases("host:com").count(), 0);
        assert_eq!(wildcard_aliases("ns/a.b.c").count(), 0, "not a hostname");
        let longest = format!("host:{}", ["a"; 127].join("."));
        assert_eq!(wildcard_aliases(&longest).count(), 126);
        let too_long = format!("host:{}", ["a"; 128].join("."));
        assert_eq!(wildcard_aliases(&too_long).count(), 0);
    }
}
