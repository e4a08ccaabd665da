//! The rules workbench in a real headless Chromium, driven over the DevTools
//! protocol as a person would use it, against the real service, broker and
//! Redis: the page shows the models in force with their hit counts; typing a
//! mistake shows it inline at its line, fixing it clears it; a preview over
//! the events the test produced shows the same tier migration matrix as
//! scoring them with `hotlead rules test`'s replay; the candidate downloads
//! as a file.
//!
//! The routes behind the page, on the router: every mistake with its line
//! and column, the token, and saving only with `rules.editable`.
//!
//! `HOTLEAD_WORKBENCH_SCREENSHOT=docs/workbench.png` also saves a screenshot.

mod support;

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use hotlead::proto::interaction_event::Interaction;
use hotlead::proto::{FormSubmission, InteractionEvent, PageView};
use hotlead::rules::RuleSet;
use serde_json::{json, Value};
use support::{last_offsets, rules_file, spawn_pipeline, KillOnDrop, Stack};
use tokio_tungstenite::tungstenite::Message;

const RULES: &str = r#"models:
  - name: engagement
    half_life: 14d
    tiers:
      - { name: warm, enter: 30, exit: 20 }
      - { name: hot, enter: 60, exit: 45 }
    rules:
      - id: pricing-page
        when: { kind: page_view, url: { prefix: /pricing } }
        points: 10
        cap: { hits: 5, per: day }
      - id: demo-request
        when: { kind: form_submission, form_id: demo-request }
        points: 25
"#;

/// A page in a headless Chromium, driven over the DevTools protocol.
struct Page {
    _chromium: KillOnDrop,
    _profile: tempfile::TempDir,
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    session: String,
    next: u64,
}

impl Page {
    async fn open(url: &str) -> Page {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args(support::CHROMIUM_FLAGS)
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run chromium ({e}); run scripts/setup.sh to install it"));
        let stderr = child.stderr.take().unwrap();
        let chromium = KillOnDrop(child);
        let endpoint = tokio::task::spawn_blocking(move || {
            let mut lines = std::io::BufReader::new(stderr).lines();
            let found = lines
                .by_ref()
                .map_while(Result::ok)
                .find_map(|l| l.strip_prefix("DevTools listening on ").map(str::to_string));
            // Keep draining, so Chromium never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            found
        })
        .await
        .unwrap()
        .expect("chromium printed no DevTools address");
        let (ws, _) = tokio_tungstenite::connect_async(endpoint.as_str()).await.unwrap();
        let mut page = Page { _chromium: chromium, _profile: profile, ws, session: String::new(), next: 0 };
        let target = page.call("Target.createTarget", json!({ "url": "about:blank" })).await;
        let attached =
            page.call("Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true })).await;
        page.session = attached["sessionId"].as_str().unwrap().to_string();
        let size = json!({ "width": 1400, "height": 1180, "deviceScaleFactor": 1, "mobile": false });
        page.call("Emulation.setDeviceMetricsOverride", size).await;
        page.call("Page.navigate", json!({ "url": url })).await;
        page
    }

    /// Sends a command and waits for its answer; events in between are
    /// skipped.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let mut msg = json!({ "id": self.next, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .unwrap()
                .unwrap();
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap();
            if v["id"] == json!(self.next) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call("Runtime.evaluate", json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }))
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page.
    async fn wait(&mut self, expr: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        // Until the page has loaded, its elements may not be there yet.
        while self.eval(&format!("(() => {{ try {{ return !!({expr}); }} catch (e) {{ return false; }} }})()")).await
            != json!(true)
        {
            let page = self.eval("document.body ? document.body.innerText : ''").await;
            assert!(Instant::now() < deadline, "{what}: the page shows\n{}", page.as_str().unwrap_or_default());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Selects `len` characters of the editor from byte offset `at` and
    /// types `text` over them, as a person typing would.
    async fn type_over(&mut self, at: usize, len: usize, text: &str) {
        self.eval(&format!(
            "(() => {{ const e = document.getElementById('editor'); e.focus(); e.setSelectionRange({at}, {}); }})()",
            at + len
        ))
        .await;
        self.call("Input.insertText", json!({ "text": text })).await;
    }
}

/// The tier migration matrix of `hotlead rules test`'s replay: contacts per
/// (tier under `before`, tier under `after`) in one model.
fn replayed_matrix(
    before: &RuleSet,
    after: &RuleSet,
    events: &[InteractionEvent],
    model: &str,
) -> BTreeMap<(String, String), u64> {
    let (a, b) = (hotlead::replay::replay(before, events), hotlead::replay::replay(after, events));
    let tier = |r: &hotlead::replay::Report, c: &str| {
        r.contacts[c].iter().find(|v| v.model == model).map_or("cold".to_string(), |v| v.tier.clone())
    };
    let mut m = BTreeMap::new();
    for c in a.contacts.keys() {
        *m.entry((tier(&a, c), tier(&b, c))).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workbench_checks_as_you_type_and_previews_on_real_events() {
    let stack = Stack::start();
    let topics = stack.topics(2).await;
    let (_dir, path) = rules_file(RULES);
    let now = hotlead::decode::now_ms() / 1000 * 1000 - 3_600_000;
    let mut events = Vec::new();
    // Pricing views and demo requests per contact: under the rules in force
    // (10 a view) ana 50 warm, ben 35 warm, cy 70 hot, dee 20 cold, eli 10 cold.
    let pricing = || Interaction::PageView(PageView { url: "/pricing".into(), ..Default::default() });
    let demo = || Interaction::FormSubmission(FormSubmission { form_id: "demo-request".into(), ..Default::default() });
    for (contact, views, demos) in [("ana", 5, 0), ("ben", 1, 1), ("cy", 2, 2), ("dee", 2, 0), ("eli", 1, 0)] {
        let kinds = (0..views).map(|k| (format!("{contact}-v{k}"), pricing()));
        for (id, interaction) in kinds.chain((0..demos).map(|k| (format!("{contact}-d{k}"), demo()))) {
            events.push(InteractionEvent {
                event_id: id,
                contact_id: contact.into(),
                occurred_at: Some(hotlead::decode::timestamp(now + events.len() as i64 * 1000)),
                interaction: Some(interaction),
                ..Default::default()
            });
        }
    }
    let delivered = stack.produce_events(&topics.input, &events).await;
    let running = spawn_pipeline(stack.config(&topics, &path), &path);
    stack.wait_applied(&topics, &last_offsets(&delivered), Duration::from_secs(60)).await;
    let port = support::serve_api(&stack, &running, &topics, "wb-token").await;

    let mut page = Page::open(&format!("http://127.0.0.1:{port}/board/rules#token=wb-token")).await;
    page.wait("document.getElementById('editor').value.includes('models:')", "the editor holds the rules in force")
        .await;
    page.wait("document.getElementById('check-status').textContent.includes('No errors')", "the file in force checks")
        .await;

    // The models in force, in words, with the hits of the running service.
    let pricing = page.eval("document.querySelector('#models [data-rule=\"pricing-page\"]').textContent").await;
    let pricing = pricing.as_str().unwrap();
    assert!(pricing.contains("page view where url starts with `/pricing`: +10, at most 5 a day"), "{pricing}");
    assert!(pricing.contains("11 hits"), "the service matched 11 pricing views: {pricing}");

    // A mistake typed into half_life shows at its line as the person types.
    let text = page.eval("document.getElementById('editor').value").await.as_str().unwrap().to_string();
    let at = text.find("half_life: 14d").unwrap() + "half_life: ".len();
    let line = text[..at].lines().count();
    page.type_over(at, 3, "two weeks").await;
    page.wait("document.querySelector('#problems li.error')", "the mistake is reported").await;
    let shown = page.eval("[...document.querySelectorAll('#problems li')].map(li => [li.dataset.line, li.dataset.column, li.textContent])").await;
    assert_eq!(shown.as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown[0][0], json!(line.to_string()), "{shown}");
    assert_eq!(shown[0][1], json!("16"), "{shown}");
    assert!(shown[0][2].as_str().unwrap().contains("`two weeks` is not a duration"), "{shown}");
    let marked = page.eval("[...document.querySelectorAll('#gutter div.error')].map(d => +d.dataset.line)").await;
    assert_eq!(marked, json!([line]), "the gutter marks the line");
    assert_eq!(page.eval("document.getElementById('preview').disabled").await, json!(true));

    // Fixed, the mistake goes; a change of points is what the preview shows.
    page.type_over(at, "two weeks".len(), "14d").await;
    page.wait("!document.querySelector('#problems li')", "the fixed file checks clean").await;
    let text = page.eval("document.getElementById('editor').value").await.as_str().unwrap().to_string();
    let points = text.find("points: 10").unwrap() + "points: ".len();
    page.type_over(points, 2, "16").await;
    page.wait("document.getElementById('check-status').textContent.includes('No errors')", "the change checks").await;
    page.wait("!document.getElementById('preview').disabled", "the preview is enabled").await;
    let candidate = page.eval("document.getElementById('editor').value").await.as_str().unwrap().to_string();
    assert_eq!(candidate, RULES.replace("points: 10", "points: 16"));

    page.eval("document.getElementById('events').value = '500'; document.getElementById('preview').click()").await;
    page.wait("document.querySelector('table.matrix')", "the preview shows a migration matrix").await;
    let cells = page
        .eval("[...document.querySelectorAll('table.matrix[data-model=\"engagement\"] td[data-from]')].map(td => [td.dataset.from, td.dataset.to, +td.textContent])")
        .await;
    let shown: BTreeMap<(String, String), u64> = cells
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c[2].as_u64().unwrap() > 0)
        .map(|c| ((c[0].as_str().unwrap().into(), c[1].as_str().unwrap().into()), c[2].as_u64().unwrap()))
        .collect();
    let before = RuleSet::parse(RULES, "in force").unwrap();
    let after = RuleSet::parse(&candidate, "candidate").unwrap();
    let expected = replayed_matrix(&before, &after, &events, "engagement");
    assert_eq!(shown, expected);
    // At 16 a view: ana 80 turns hot, dee 32 warm; ben 41 stays warm, cy 82
    // hot and eli 16 cold.
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(expected[&pair("cold", "warm")], 1, "{expected:?}");
    assert_eq!(expected[&pair("warm", "hot")], 1, "{expected:?}");
    let alerting = page
        .eval("[...document.querySelectorAll('#would-alert li[data-contact]')].map(li => li.dataset.contact)")
        .await;
    assert_eq!(alerting, json!(["ana", "dee"]), "ana would turn hot and dee warm");
    let stopping = page.eval("document.querySelectorAll('#would-stop li[data-contact]').length").await;
    assert_eq!(stopping, json!(0));
    let hits = page
        .eval("[...document.querySelectorAll('table.hits tr[data-rule]')].map(tr => [...tr.children].map(td => td.textContent))")
        .await;
    assert_eq!(hits, json!([["demo-request", "3", "3"], ["pricing-page", "11", "11"]]));

    // Download saves the candidate as a file.
    let downloads = tempfile::tempdir().unwrap();
    let session = std::mem::take(&mut page.session);
    let allow = json!({ "behavior": "allow", "downloadPath": downloads.path().display().to_string() });
    page.call("Browser.setDownloadBehavior", allow).await;
    page.session = session;
    page.eval("document.getElementById('download').click()").await;
    let saved = downloads.path().join("rules.yaml");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&saved).ok().as_deref() != Some(candidate.as_str()) {
        assert!(Instant::now() < deadline, "no download of the candidate in {}", downloads.path().display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    if let Ok(file) = std::env::var("HOTLEAD_WORKBENCH_SCREENSHOT") {
        // For the docs: a lint warning shown inline beside the preview.
        let exit = candidate.find("exit: 45").unwrap() + "exit: ".len();
        page.type_over(exit, 2, "25").await;
        page.wait("document.querySelector('#problems li.warning')", "the warning is shown").await;
        let shot = page.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::write(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file), png).unwrap();
    }
    running.finish().await;
}

/// Calls the router as the page does: `method` on `path` with a JSON body,
/// with or without the token; returns the status and the JSON answer.
async fn call(router: &axum::Router, method: &str, path: &str, body: Value, token: Option<&str>) -> (u16, Value) {
    use tower::ServiceExt as _;
    let mut req = axum::http::Request::builder().method(method).uri(path).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = router.clone().oneshot(req.body(axum::body::Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = res.status().as_u16();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_checks_every_mistake_and_saves_only_when_editable() {
    let stack = Stack::start();
    let (_dir, path) = rules_file(RULES);
    let live = std::sync::Arc::new(hotlead::reload::LiveRules::load(&path).unwrap());
    let store = hotlead::store::Store::connect(&stack.redis_url).await.unwrap();
    let context = |editable: bool| {
        let mut ctx = hotlead::api::ApiContext::new(
            store.clone(),
            live.clone(),
            std::sync::Arc::new(hotlead::pipeline::Status::default()),
            "interactions".into(),
            &hotlead::kafka::client_config(&stack.brokers, &[]),
        )
        .unwrap();
        ctx.token = Some("t0ken".into());
        ctx.rules_editable = editable;
        hotlead::api::router(ctx)
    };
    let (locked, open) = (context(false), context(true));

    // Every mistake, each at its line and column, with the suggestion.
    let broken = RULES.replace("half_life: 14d", "half_life: soon").replace("kind: page_view", "kind: page_veiw");
    let (status, answer) = call(&locked, "POST", "/v1/rules/check", json!({ "text": broken }), Some("t0ken")).await;
    assert_eq!(status, 200);
    assert_eq!(answer["ok"], json!(false));
    let found: Vec<(u64, u64, &str)> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["column"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(found, [(3, 16, "invalid_duration"), (9, 23, "unknown_kind")]);
    assert_eq!(answer["errors"][1]["suggestion"], json!("page_view"));
    let (status, _) = call(&locked, "POST", "/v1/rules/check", json!({ "text": broken }), None).await;
    assert_eq!(status, 401, "the token is required");

    // Saving: refused unless editable; a file with errors is never written.
    let changed = RULES.replace("points: 25", "points: 30");
    let (status, answer) = call(&locked, "PUT", "/v1/rules", json!({ "text": changed }), Some("t0ken")).await;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = call(&open, "PUT", "/v1/rules", json!({ "text": broken }), Some("t0ken")).await;
    assert_eq!((status, &answer["check"]["ok"]), (422, &json!(false)), "{answer}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), RULES);
    let (status, answer) = call(&open, "PUT", "/v1/rules", json!({ "text": changed }), Some("t0ken")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), changed);
    assert_eq!(live.current().models[0].rules[1].points, 30.0, "the service runs the saved rules");
    assert_eq!(live.current().models[0].version, 2, "a changed model gets a new version");
}
