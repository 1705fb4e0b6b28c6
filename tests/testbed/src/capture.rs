//! Packet captures on the fabric bridge (tshark), for tests that must show what crossed the
//! wire between nodes.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Result, Testbed, TestbedError};

/// How long tshark may take to start writing.
const START: Duration = Duration::from_secs(10);

/// A running capture of everything on the fabric bridge.
#[derive(Debug)]
pub struct FabricCapture {
    child: Child,
    file: PathBuf,
}

/// What a finished capture saw: the raw pcap bytes and tshark's field dump of `filter`.
#[derive(Debug)]
pub struct Captured {
    pub raw: Vec<u8>,
    pub fields: String,
}

impl Captured {
    /// Whether `needle` appears anywhere in the captured bytes (payload in clear).
    pub fn contains_bytes(&self, needle: &[u8]) -> bool {
        self.raw.windows(needle.len()).any(|w| w == needle)
    }
}

impl FabricCapture {
    pub fn start(testbed: &Testbed) -> Result<Self> {
        let file = std::env::temp_dir().join(format!("{}-fabric.pcap", testbed.prefix()));
        let child = testbed
            .fabric()
            .command("tshark")
            .args(["-q", "-i", "br0", "-w"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| TestbedError::Spawn {
                command: "tshark".into(),
                source,
            })?;
        // tshark is capturing once its file exists.
        let deadline = Instant::now() + START;
        while !file.exists() {
            if Instant::now() > deadline {
                return Err(TestbedError::Command {
                    command: "tshark".into(),
                    stderr: "did not start capturing".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self { child, file })
    }

    /// Stops the capture; returns the raw bytes and the `fields` of packets matching `filter`.
    pub fn finish(mut self, filter: &str, fields: &[&str]) -> Result<Captured> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        let raw = std::fs::read(&self.file).map_err(|source| TestbedError::Spawn {
            command: format!("read {}", self.file.display()),
            source,
        })?;
        let mut read = Command::new("tshark");
        read.arg("-r")
            .arg(&self.file)
            .args(["-Y", filter, "-T", "fields"]);
        for field in fields {
            read.args(["-e", field]);
        }
        let fields = crate::run(&mut read)?;
        let _ = std::fs::remove_file(&self.file);
        Ok(Captured { raw, fields })
    }
}
