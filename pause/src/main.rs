//! `pause`: the first process of every pod sandbox (what the kubelet's `pause` image runs). It
//! holds the sandbox's namespaces for the pod's containers, reaps the orphans it inherits as the
//! sandbox's init, and exits cleanly on SIGTERM or SIGINT. It does nothing else.

use nix::{
    sys::{
        signal::{SigSet, Signal},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

fn main() {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        signals.add(signal);
    }
    // Blocked, then taken one by one with sigwait: no handler runs at an arbitrary point.
    if let Err(error) = signals.thread_block() {
        eprintln!("pause: blocking signals: {error}");
        std::process::exit(1);
    }
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(_) => std::process::exit(0),
            Err(error) => {
                eprintln!("pause: waiting for signals: {error}");
                std::process::exit(1);
            }
        }
    }
}

/// Collects every exited child, so none stays a zombie.
fn reap() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
