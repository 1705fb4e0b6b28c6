//! A TCP client that runs inside a pod: the test binary re-executed (`pod_client` test, with
//! `WEFT_POD_CLIENT` set) through `Testbed::pod_command`, so it starts in the pod's netns and
//! cgroup like any unmodified application. It prints one `RESULT ...` line.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Instant,
};

use weft_testbed::Testbed;

const ENV: &str = "WEFT_POD_CLIENT";

/// The `pod_client` test body: runs the command in `WEFT_POD_CLIENT` when re-executed in a pod;
/// otherwise checks the client's workloads against a local echo server.
pub fn entry() {
    match std::env::var(ENV) {
        Ok(command) => {
            let words: Vec<&str> = command.split_whitespace().collect();
            println!("RESULT {}", run(&words));
        }
        Err(_) => {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap().to_string();
            std::thread::spawn(move || {
                for stream in listener.incoming().take(3).flatten() {
                    std::thread::spawn(move || super::echo(stream));
                }
            });
            assert_eq!(run(&["echo", &address, "1", "0"]), "ok=1 failed=0");
            assert!(run(&["rtt", &address, "10"]).starts_with("rtt_us="));
            assert!(run(&["bulk", &address, "1"]).starts_with("mib_per_s="));
        }
    }
}

/// Runs `command` in `pod` and returns what follows `RESULT `.
pub fn in_pod(testbed: &Testbed, pod: &str, command: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let output = testbed
        .pod_command(pod, exe.to_str().unwrap())
        .args(["pod_client", "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV, command)
        .output()
        .expect("run the pod client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!(
                "pod client `{command}` printed no result: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .to_string()
}

/// Starts `command` in `pod` without waiting.
pub fn spawn_in_pod(testbed: &Testbed, pod: &str, command: &str) -> std::process::Child {
    let exe = std::env::current_exe().unwrap();
    let mut child: Command = testbed.pod_command(pod, exe.to_str().unwrap());
    child
        .args(["pod_client", "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV, command)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the pod client")
}

pub fn result_of(child: std::process::Child) -> String {
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("pod client printed no result: {stdout}"))
        .to_string()
}

fn run(words: &[&str]) -> String {
    match words {
        ["echo", destination, count, first_port] => {
            let destination: SocketAddr = destination.parse().unwrap();
            let count: u32 = count.parse().unwrap();
            let first_port: u16 = first_port.parse().unwrap();
            let (mut ok, mut failed) = (0, 0);
            let mut first_error = None;
            for i in 0..count {
                let port = if first_port == 0 {
                    0
                } else {
                    first_port + i as u16
                };
                match echo_once(destination, port, i) {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(format!("round {i}, port {port}: {e}"));
                    }
                }
            }
            // A failure names the first error, so that a failed assertion says what happened.
            match first_error {
                None => format!("ok={ok} failed={failed}"),
                Some(e) => format!("ok={ok} failed={failed} first error: {e}"),
            }
        }
        ["rtt", destination, rounds] => {
            let rounds: u32 = rounds.parse().unwrap();
            let mut stream = TcpStream::connect(destination).unwrap();
            stream.set_nodelay(true).unwrap();
            let message = [b'x'; 64];
            let mut reply = [0u8; 64];
            let start = Instant::now();
            for _ in 0..rounds {
                stream.write_all(&message).unwrap();
                stream.read_exact(&mut reply).unwrap();
                assert_eq!(reply, message);
            }
            let micros = start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
            format!("rtt_us={micros:.2}")
        }
        ["bulk", destination, mib] => {
            let mib: usize = mib.parse().unwrap();
            let total = mib << 20;
            let stream = TcpStream::connect(destination).unwrap();
            let mut writer = stream.try_clone().unwrap();
            let start = Instant::now();
            let sender = std::thread::spawn(move || {
                let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
                for _ in 0..total / chunk.len() {
                    writer.write_all(&chunk).unwrap();
                }
                writer.shutdown(std::net::Shutdown::Write).unwrap();
            });
            let mut reader = stream;
            let mut buffer = vec![0u8; 64 * 1024];
            // Twice the chunk, so any window of up to one chunk is a plain slice.
            let pattern: Vec<u8> = (0..128 * 1024)
                .map(|i| (i % (64 * 1024) % 251) as u8)
                .collect();
            let mut received = 0usize;
            let mut retries = 0u32;
            loop {
                let n = match reader.read(&mut buffer) {
                    Ok(n) => n,
                    // A blocking socket whose peer splices into it (sk_msg) can report EAGAIN
                    // while the spliced data is on its way; try again.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && retries < 100_000 => {
                        retries += 1;
                        std::thread::yield_now();
                        continue;
                    }
                    Err(e) => panic!("read after {received} bytes: {e}"),
                };
                if n == 0 {
                    break;
                }
                let start = received % (64 * 1024);
                assert!(
                    buffer[..n] == pattern[start..start + n],
                    "bytes out of order or corrupted at offset {received}"
                );
                received += n;
            }
            sender.join().unwrap();
            assert_eq!(received, total, "bytes echoed");
            let rate = mib as f64 / start.elapsed().as_secs_f64();
            format!("mib_per_s={rate:.1} eagain={retries}")
        }
        ["flood", destination, mib, window_ms] => {
            // Writes `mib` MiB as fast as the socket takes them and reports how much it got
            // rid of within the first `window_ms` (while a slow reader reads nothing), then the
            // byte count the reader confirms.
            let total = mib.parse::<usize>().unwrap() << 20;
            let window = std::time::Duration::from_millis(window_ms.parse().unwrap());
            let stream = TcpStream::connect(destination).unwrap();
            let mut writer = stream.try_clone().unwrap();
            let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counter = written.clone();
            let sender = std::thread::spawn(move || {
                let chunk: Vec<u8> = (0..64 * 1024).map(super::pattern_byte).collect();
                for _ in 0..total / chunk.len() {
                    writer.write_all(&chunk).unwrap();
                    counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
                }
                writer.shutdown(std::net::Shutdown::Write).unwrap();
            });
            std::thread::sleep(window);
            let early = written.load(std::sync::atomic::Ordering::Relaxed);
            sender.join().unwrap();
            let mut confirmed = Vec::new();
            let mut reader = &stream;
            let mut byte = [0u8; 1];
            let mut retries = 0u32;
            while confirmed.last() != Some(&b'\n') {
                match reader.read(&mut byte) {
                    Ok(0) => break,
                    Ok(_) => confirmed.push(byte[0]),
                    // See `bulk`: EAGAIN while spliced data is on its way.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && retries < 100_000 => {
                        retries += 1;
                        std::thread::yield_now();
                    }
                    Err(e) => panic!("reading the confirmation: {e}"),
                }
            }
            let confirmed = String::from_utf8_lossy(&confirmed).into_owned();
            format!("early_mib={} confirmed={}", early >> 20, confirmed.trim())
        }
        ["connect", destination] => {
            let destination: SocketAddr = destination.parse().unwrap();
            match TcpStream::connect_timeout(&destination, std::time::Duration::from_secs(3)) {
                Ok(_) => "connected".to_string(),
                Err(e) => format!("error={:?}", e.kind()),
            }
        }
        ["udp", destination] => {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            socket
                .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            socket.connect(destination).unwrap();
            socket.send(b"datagram").unwrap();
            let mut reply = [0u8; 64];
            match socket.recv(&mut reply) {
                Ok(n) => format!("reply={}", String::from_utf8_lossy(&reply[..n])),
                Err(e) => format!("error={:?}", e.kind()),
            }
        }
        other => panic!("unknown pod client command {other:?}"),
    }
}

fn echo_once(destination: SocketAddr, bind_port: u16, i: u32) -> std::io::Result<()> {
    let domain = socket2::Domain::for_address(destination);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    if bind_port != 0 {
        socket.set_reuse_address(true)?;
        let any: SocketAddr = ([0, 0, 0, 0], bind_port).into();
        socket.bind(&any.into())?;
    }
    socket.connect_timeout(&destination.into(), std::time::Duration::from_secs(5))?;
    let mut stream: TcpStream = socket.into();
    let message = format!("ping {i}\n");
    stream.write_all(message.as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    if line != message {
        return Err(std::io::Error::other(format!("echo {line:?}")));
    }
    Ok(())
}
