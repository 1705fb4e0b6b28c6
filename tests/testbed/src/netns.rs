//! Named network namespaces (`ip netns`), and running code or processes inside one.

use std::{fs::File, net::Ipv4Addr, path::PathBuf, process::Command};

use nix::sched::CloneFlags;

use crate::{Cgroup, Result, TestbedError, run};

/// A named network namespace under `/run/netns`. Cloning copies the handle, not the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name`.
    pub fn create(name: String) -> Result<Self> {
        run(Command::new("ip").args(["netns", "add", &name]))?;
        Ok(Self { name })
    }

    /// A handle to an existing namespace.
    pub fn named(name: String) -> Self {
        Self { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file (what `setns` takes).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(crate::NETNS_DIR).join(&self.name)
    }

    /// Opens the namespace file, e.g. to hand it to a process that enters it.
    pub fn open(&self) -> Result<File> {
        File::open(self.path()).map_err(|source| TestbedError::Netns {
            name: self.name.clone(),
            source,
        })
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        run(self
            .command("sysctl")
            .args(["-qw", &format!("{key}={value}")]))?;
        Ok(())
    }

    /// Masquerades what this namespace forwards from `source` to `destination` (an nftables NAT
    /// rule at its postrouting hook, in a table of its own): the packets leave with this
    /// namespace's address on the outgoing interface, as a node rewrites a NodePort's traffic or
    /// traffic from outside the cluster. The rule goes with the namespace.
    pub fn masquerade(&self, source: Ipv4Addr, destination: Ipv4Addr) -> Result<()> {
        run(self.command("nft").arg(format!(
            "add table ip testbed-masquerade; \
             add chain ip testbed-masquerade postrouting {{ type nat hook postrouting priority srcnat; }}; \
             add rule ip testbed-masquerade postrouting ip saddr {source} ip daddr {destination} masquerade"
        )))?;
        Ok(())
    }

    /// A command that runs `program` inside this namespace (in the caller's cgroup).
    ///
    /// `nsenter --net` switches only the network namespace. (`ip netns exec` would also remount
    /// `/sys` in a private mount namespace, hiding the cgroup v2 and bpffs mounts that the node
    /// agent needs.)
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        command
    }

    /// A command that runs `program` inside this namespace and inside `cgroup`: the shell moves
    /// itself into the cgroup, then execs into the namespace, so the program starts in both.
    pub fn command_in_cgroup(&self, cgroup: &Cgroup, program: &str) -> Command {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"echo $$ > "$0" && ns="$1" && shift && exec nsenter "--net=$ns" -- "$@""#)
            .arg(cgroup.path().join("cgroup.procs"))
            .args([self.path().to_string_lossy().as_ref(), program]);
        command
    }

    /// Runs `f` on a fresh thread that has entered this namespace. Sockets created there stay in
    /// the namespace after the thread ends, so this is how in-process servers and clients are
    /// placed in a pod or a node.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = self.open()?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                    Ok(f())
                })
                .join()
                .expect("a function run in a network namespace panicked")
        })
        .map_err(|source| TestbedError::Netns {
            name: self.name.clone(),
            source,
        })
    }

    /// Deletes the namespace (it goes away once no process holds it). Absent is not an error.
    pub fn delete(&self) -> Result<()> {
        if !self.path().exists() {
            return Ok(());
        }
        run(Command::new("ip").args(["netns", "delete", &self.name]))?;
        Ok(())
    }

    /// Every named namespace on the machine.
    pub fn list() -> Result<Vec<String>> {
        Ok(run(Command::new("ip").args(["netns", "list"]))?
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }
}
