//! Socket options the loader needs and std does not offer.
use std::{fs::File, io, os::fd::AsFd, os::fd::AsRawFd, path::Path};

use super::NetnsCookie;

/// The cookie of the network namespace `socket` lives in (`SO_NETNS_COOKIE`, Linux 5.14+): the
/// same number the programs get from `bpf_get_netns_cookie`.
pub fn netns_cookie(socket: impl AsFd) -> io::Result<NetnsCookie> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the fd is borrowed and open for the call; `cookie` and `len` are valid, writable
    // and `len` holds the size of `cookie`, which is what the kernel writes at most.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(NetnsCookie(cookie))
}

/// The cookie of the network namespace at `path` (`/proc/<pid>/ns/net`, or a bind mount such as
/// `/run/netns/<name>`): a socket is created in it on a short-lived thread that enters it, so
/// the caller's own thread never changes namespace.
pub fn netns_cookie_of(path: &Path) -> io::Result<NetnsCookie> {
    let file = File::open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                let socket =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
                netns_cookie(&socket)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_of_one_namespace_share_a_cookie() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let cookie = netns_cookie(&a).unwrap();
        assert_ne!(cookie.0, 0);
        assert_eq!(cookie, netns_cookie(&b).unwrap());
        // The same namespace, through its file.
        assert_eq!(
            netns_cookie_of(Path::new("/proc/self/ns/net")).unwrap(),
            cookie
        );
    }
}
