//! A small WebDriver client (the W3C protocol over HTTP) for Debian's `chromedriver` driving
//! headless `chromium`: enough to load a page, wait for an element, run a script and take a
//! screenshot. The driver and the browser are stopped when the [`Browser`] is dropped.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::observability::http_request;

/// A headless Chromium session.
pub struct Browser {
    driver: Child,
    address: SocketAddr,
    session: String,
    _profile: tempdir::Dir,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Browser {
    /// Starts `chromedriver` on a free loopback port and opens a headless session.
    pub fn start(log: &Path) -> anyhow::Result<Self> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver (`apt-get install chromium chromium-driver`, or `cargo xtask setup`)")?;
        let profile = tempdir::Dir(
            std::env::temp_dir().join(format!("weft-chromium-{}-{port}", std::process::id())),
        );
        let mut browser = Self {
            driver,
            address,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http_request(address, "GET", "/status", None)
            .is_ok_and(|(_, body)| body.contains("\"ready\":true"))
        {
            if Instant::now() > deadline {
                bail!("chromedriver is not ready on {address}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1000",
                         format!("--user-data-dir={}", browser._profile.0.display())],
            },
        }}});
        let answer = browser.call("POST", "/session", Some(capabilities))?;
        browser.session = answer["sessionId"]
            .as_str()
            .with_context(|| format!("no session in {answer}"))?
            .to_owned();
        Ok(browser)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let body = body.map(|b| b.to_string());
        let (status, text) = http_request(self.address, method, path, body.as_deref())?;
        let answer: Value =
            serde_json::from_str(&text).with_context(|| format!("chromedriver answered {text}"))?;
        if status != 200 {
            bail!(
                "chromedriver answered {status} to {method} {path}: {}",
                answer["value"]
            );
        }
        Ok(answer["value"].clone())
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn navigate(&self, url: &str) -> anyhow::Result<()> {
        self.session_call("POST", "/url", Some(json!({ "url": url })))?;
        Ok(())
    }

    /// Runs a script in the page (its `return` value comes back).
    pub fn script(&self, script: &str) -> anyhow::Result<Value> {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Polls `script` until it returns something other than `null` or `false`.
    pub fn wait_for(&self, script: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.script(script)?;
            if !value.is_null() && value != false {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("the page never answered {script}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Saves a PNG of the window.
    pub fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let encoded = self.session_call("GET", "/screenshot", None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().context("a screenshot")?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.session_call("DELETE", "", None);
        }
        crate::terminate(&mut self.driver);
    }
}
