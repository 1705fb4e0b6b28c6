//! [`RecordText`]: the text a request's record keeps, borrowed from the request or the
//! configuration rather than copied.

use std::sync::Arc;

use http::HeaderValue;
use http::uri::{Authority, PathAndQuery};

use crate::model::Cluster;

/// Text a record keeps, shared with where it comes from when it can be (a header value or the
/// URI of the request, a name in the configuration), so that recording a request copies no
/// string.
#[derive(Clone, Default)]
pub enum RecordText {
    #[default]
    Empty,
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
    /// A header value of visible ASCII (checked when made).
    Header(HeaderValue),
    PathAndQuery(PathAndQuery),
    Authority(Authority),
    /// The name of a cluster of the configuration.
    Cluster(Arc<Cluster>),
    /// A generated `x-request-id` (a UUID, ASCII).
    RequestId([u8; 36]),
}

impl RecordText {
    /// A header's value, or nothing when it is not visible ASCII (as `to_str` reads it).
    pub fn header(value: Option<&HeaderValue>) -> Self {
        match value {
            Some(value) if value.to_str().is_ok() => RecordText::Header(value.clone()),
            _ => RecordText::Empty,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            RecordText::Empty => "",
            RecordText::Static(text) => text,
            RecordText::Shared(text) => text,
            RecordText::Owned(text) => text,
            RecordText::Header(value) => value.to_str().unwrap_or_default(),
            RecordText::PathAndQuery(path) => path.as_str(),
            RecordText::Authority(authority) => authority.as_str(),
            RecordText::Cluster(cluster) => &cluster.name,
            RecordText::RequestId(id) => std::str::from_utf8(id).unwrap_or_default(),
        }
    }
}

impl std::ops::Deref for RecordText {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for RecordText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RecordText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for RecordText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<&str> for RecordText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<&'static str> for RecordText {
    fn from(text: &'static str) -> Self {
        RecordText::Static(text)
    }
}

impl From<String> for RecordText {
    fn from(text: String) -> Self {
        RecordText::Owned(text)
    }
}

impl From<Arc<str>> for RecordText {
    fn from(text: Arc<str>) -> Self {
        RecordText::Shared(text)
    }
}
