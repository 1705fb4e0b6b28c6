//! How many resources the server looked at, counted in unit tests so that a test can bound
//! the work of a request by what the request covers instead of by a clock. Outside tests the
//! count is nothing.

#[cfg(test)]
thread_local! {
    static LOOKED_AT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts `resources` looked at by a lookup or a diff on this thread.
#[inline]
pub(crate) fn looked_at(resources: usize) {
    #[cfg(test)]
    LOOKED_AT.with(|count| count.set(count.get() + resources));
    #[cfg(not(test))]
    let _ = resources;
}

/// The resources looked at on this thread since the last call.
#[cfg(test)]
pub(crate) fn take_looked_at() -> usize {
    LOOKED_AT.with(|count| count.replace(0))
}
