//! Headless Chromium for the tests that load report pages: finding it, and the DOM of a page
//! once its inline check script has run (what rendered is recorded on `<body>`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Chromium, or None (with a message) when it is not installed; with
/// `IDC_TEST_REQUIRE_BROWSER=1` (set by `.ci/test` under CI) a missing browser fails the test.
pub fn browser_or_skip() -> Option<PathBuf> {
    let found = chromium();
    if found.is_none() {
        assert_ne!(
            std::env::var("IDC_TEST_REQUIRE_BROWSER").as_deref(),
            Ok("1"),
            "IDC_TEST_REQUIRE_BROWSER=1 but chromium is not installed (apt-get install chromium)"
        );
        eprintln!(
            "chromium not found: the pages were not rendered in a browser (install chromium, or set IDC_CHROMIUM)"
        );
    }
    found
}

/// Chromium, if installed: `IDC_CHROMIUM`, `chromium` or `chromium-browser` on the PATH, or
/// /usr/bin/chromium.
pub fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("IDC_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|d| [d.join("chromium"), d.join("chromium-browser")])
        .chain([PathBuf::from("/usr/bin/chromium")])
        .find(|p| p.is_file())
}

/// The DOM of `page` after load, as headless Chromium serializes it.
pub fn dump_dom(browser: &Path, page: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", browser.display()));
    // Drain the pipes while waiting, so that a large DOM cannot block the browser.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let until = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} did not finish loading {} in 90s",
                browser.display(),
                page.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (dom, log) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success() && dom.contains("<body"),
        "{} failed on {} ({status}):\n{log}",
        browser.display(),
        page.display()
    );
    dom
}

/// The value of attribute `name` of the `<body>` tag in `dom`.
pub fn body_attr(dom: &str, name: &str) -> Option<String> {
    let start = dom.find("<body")?;
    let tag = &dom[start..start + dom[start..].find('>')?];
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    Some(tag[at..at + tag[at..].find('"')?].to_string())
}

/// The DOM of `page` once its check script ran.
pub fn checked_dom(browser: &Path, page: &Path) -> String {
    let dom = dump_dom(browser, page);
    assert_eq!(
        body_attr(&dom, "data-checked").as_deref(),
        Some("true"),
        "the page's check did not run: {}",
        &dom[dom.find("<body").unwrap_or(0)..][..200.min(dom.len())]
    );
    dom
}
