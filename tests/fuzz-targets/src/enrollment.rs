//! The node agent's enrollment socket, for real: a Unix socket served by the enrollment server.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use weft_enrollment::testing::RecordingAgent;
use weft_enrollment::{EnrollmentReply, EnrollmentServer};

struct Served {
    runtime: tokio::runtime::Runtime,
    socket: PathBuf,
}

/// One server for the whole run (it serves one client at a time, as the agent does), under a
/// directory of this process's own.
static SERVED: LazyLock<Served> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = std::env::temp_dir().join(format!("weft-fuzz-enrollment-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a socket directory");
    let socket = dir.join("enroll.sock");
    let server = runtime
        .block_on(async { EnrollmentServer::bind(&socket) })
        .expect("bind the enrollment socket");
    let agent = Arc::new(RecordingAgent::default());
    runtime.spawn(async move { server.run(agent.as_ref()).await });
    Served { runtime, socket }
});

/// Whatever bytes a client writes, the server answers each line with one well-formed reply (or
/// one error, then closes, for an oversized line), and neither panics nor hangs.
pub fn socket(input: &[u8]) {
    let served = &*SERVED;
    let replies = served.runtime.block_on(async {
        let mut stream = UnixStream::connect(&served.socket)
            .await
            .expect("connect to the enrollment socket");
        // The server may close early (an oversized line); what it answered before counts.
        let _ = stream.write_all(input).await;
        let _ = stream.shutdown().await;
        let mut replies = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut replies))
            .await
            .expect("the server answers every message and closes")
            .expect("read the replies");
        replies
    });
    let text = std::str::from_utf8(&replies).expect("replies are UTF-8");
    let lines = input.split(|b| *b == b'\n').count();
    let mut count = 0;
    for line in text.lines() {
        serde_json::from_str::<EnrollmentReply>(line)
            .unwrap_or_else(|e| panic!("reply {line:?} is malformed: {e}"));
        count += 1;
    }
    assert!(count <= lines, "{count} replies to {lines} lines");
}
