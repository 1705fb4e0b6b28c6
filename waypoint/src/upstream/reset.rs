//! Why an upstream stream ended without its whole response, named as Envoy's codecs name it
//! (`Http::StreamResetReason`): the router draws the response flag and the details of a reset
//! from this reason, before the response began and after (`Filter::onUpstreamReset`,
//! `streamResetReasonToResponseFlag` in Envoy's `source/common/router/router.cc`).

use std::error::Error;

/// The reason of an upstream reset that is not a refused stream nor a failed connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The upstream reset the stream: an HTTP/2 `RST_STREAM` (Envoy's `RemoteReset`, `UR`).
    RemoteReset,
    /// The upstream's connection ended under the stream (Envoy's `ConnectionTermination`, `UC`).
    ConnectionTermination,
    /// The upstream broke its protocol (Envoy's `ProtocolError`, `UPE`).
    ProtocolError,
}

impl ResetReason {
    /// The reason of an error a hyper client connection gave for a request (`response_started`
    /// false) or for its response's body (true). An HTTP/2 error is a remote reset when the
    /// upstream sent `RST_STREAM`, else the end of its connection. An HTTP/1 response that
    /// does not parse is a protocol error; one cut short after its head too, however its
    /// connection ended (Envoy's HTTP/1 codec reads the close as the message ending early);
    /// a connection that ends before any answer is a termination.
    pub fn of(error: &(dyn Error + 'static), response_started: bool) -> Self {
        let hyper = error.downcast_ref::<hyper::Error>();
        let h2 = hyper
            .and_then(Error::source)
            .and_then(|source| source.downcast_ref::<h2::Error>());
        match h2 {
            Some(h2) if h2.is_reset() && h2.is_remote() => ResetReason::RemoteReset,
            Some(_) => ResetReason::ConnectionTermination,
            None if response_started || hyper.is_some_and(hyper::Error::is_parse) => {
                ResetReason::ProtocolError
            }
            None => ResetReason::ConnectionTermination,
        }
    }
}
