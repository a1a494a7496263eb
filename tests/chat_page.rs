//! The chat page in a real browser: headless Chromium opens `/chat` twice, and the two pages
//! exchange messages through a `chat` room of the real server.

mod common;

use common::browser::{Browser, Page};
use common::TestServer;

/// A JavaScript condition: the chat log has a line of `kind` whose text is `text`.
fn log_has(kind: &str, text: &str) -> String {
    let text = serde_json::to_string(text).expect("JSON string");
    format!(
        "[...document.querySelectorAll('#log li.{kind}')]
           .some(item => item.lastChild.textContent === {text})"
    )
}

/// Types `text` into the message box and clicks Send, as a person would.
fn say(browser: &mut Browser, page: &Page, text: &str) {
    browser.bring_to_front(page);
    browser.click(page, "#text");
    browser.type_text(page, text);
    browser.click(page, "#send");
}

#[test]
fn two_pages_in_chromium_exchange_messages() {
    let Some(mut browser) = Browser::launch_or_skip("two_pages_in_chromium_exchange_messages")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path(), 2, &[]);
    let base = format!("http://{}/chat", server.addr);

    let ada = browser.open(&format!("{base}?room=garden&name=ada"));
    browser.wait_for(
        &ada,
        "document.getElementById('status').textContent === 'In room garden as ada.'",
        "ada to join",
    );
    browser.wait_for(&ada, &log_has("event", "ada joined (1 here)"), "ada's join");
    let bob = browser.open(&format!("{base}?room=garden&name=bob"));
    browser.wait_for(&bob, &log_has("event", "bob joined (2 here)"), "bob's join");
    browser.wait_for(
        &ada,
        &log_has("event", "bob joined (2 here)"),
        "bob's join at ada",
    );

    say(&mut browser, &ada, "hello from ada");
    browser.wait_for(
        &bob,
        &log_has("message", "ada: hello from ada"),
        "ada's message",
    );
    // The room sends every message to everyone, the sender included, with the server's time.
    browser.wait_for(
        &ada,
        &log_has("message", "ada: hello from ada"),
        "ada's echo",
    );
    assert_eq!(
        browser.evaluate(
            &bob,
            "document.querySelector('#log li.message .time') !== null"
        ),
        true
    );
    assert_eq!(
        browser.evaluate(&ada, "document.getElementById('text').value"),
        ""
    );

    say(&mut browser, &bob, "hi ada <b>not bold</b>");
    browser.wait_for(
        &ada,
        &log_has("message", "bob: hi ada <b>not bold</b>"),
        "bob's answer",
    );
    // A peer's text is shown as text, never parsed as HTML.
    assert_eq!(
        browser.evaluate(&ada, "document.querySelector('#log b') === null"),
        true
    );

    let screenshot = browser.screenshot(&ada);
    assert!(screenshot.starts_with(b"\x89PNG"), "not a PNG screenshot");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chat_page.png");
    std::fs::write(&path, screenshot).expect("write the screenshot");

    browser.close(bob);
    browser.wait_for(&ada, &log_has("event", "bob left (1 here)"), "bob's leave");
    drop(browser);
    assert_eq!(server.stop(), Some(0));
}
