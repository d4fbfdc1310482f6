//! `specrun serve` end to end on the mock backend, on loopback with an ephemeral port: chat and
//! text completions streamed and not, concurrency, a client that leaves mid-stream, a full
//! queue, every kind of bad input, the API key, graceful stop on SIGTERM — and, when the
//! `openai` Python package is at hand (`scripts/test.sh` installs it), the official client.

#[path = "support/server.rs"]
mod server;

use server::{agent, json, post, post_with, repo, Server};
use std::io::{BufRead, BufReader, Read};
use std::process::Command;
use std::time::{Duration, Instant};

fn start(extra: &[&str]) -> Server {
    start_env(extra, &[])
}

fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut args = vec!["--mock", "--config"];
    let config = repo("models.toml");
    args.push(config.to_str().unwrap());
    args.extend_from_slice(extra);
    server::start(&args, env)
}

/// The text of a non-streamed response.
fn text_of(v: &serde_json::Value) -> String {
    let c = &v["choices"][0];
    c["message"]["content"].as_str().or(c["text"].as_str()).unwrap().to_string()
}

/// The text of an SSE body (deltas joined), checking the framing: `data:` events, `[DONE]` last.
fn join_stream(body: &str) -> (String, String) {
    let data: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    let mut text = String::new();
    let mut finish = String::new();
    for d in &data[..data.len() - 1] {
        let v = json(d);
        if let Some(c) = v["choices"].get(0) {
            text.push_str(c["delta"]["content"].as_str().or(c["text"].as_str()).unwrap_or(""));
            if let Some(f) = c["finish_reason"].as_str() {
                finish = f.to_string();
            }
        }
    }
    (text, finish)
}

fn chat_body(content: &str, extra: &str) -> String {
    format!(r#"{{"messages": [{{"role": "user", "content": {}}}]{extra}}}"#, serde_json::to_string(content).unwrap())
}

#[test]
fn chat_and_text_completions_streamed_and_not_agree() {
    let s = start(&[]);
    for (path, body) in [
        ("/v1/chat/completions", chat_body("tell me a story", r#", "max_tokens": 30, "temperature": 0.8, "seed": 42"#)),
        ("/v1/completions", r#"{"prompt": "once upon a time", "max_tokens": 30, "temperature": 0.8, "seed": 42}"#.to_string()),
    ] {
        let (code, whole) = post(&s, path, &body);
        assert_eq!(code, 200, "{whole}");
        let whole = json(&whole);
        let text = text_of(&whole);
        assert!(!text.is_empty());
        assert_eq!(whole["usage"]["completion_tokens"], 30, "{whole}");
        assert!(whole["usage"]["specrun"]["tokens_per_round"].as_f64().unwrap() >= 1.0);
        let streamed_body = body.replacen('{', r#"{"stream": true, "stream_options": {"include_usage": true}, "#, 1);
        let (code, sse) = post(&s, path, &streamed_body);
        assert_eq!(code, 200, "{sse}");
        let (streamed, finish) = join_stream(&sse);
        assert_eq!(streamed, text, "{path}: streamed chunks joined equal the whole response");
        assert_eq!(finish, "length");
        assert!(sse.contains("\"completion_tokens\":30"), "the usage chunk: {sse}");
        // the same prompt again: its slot kept all of it but the last token (--prompt-cache on)
        let n_prompt = whole["usage"]["prompt_tokens"].as_u64().unwrap();
        assert_eq!(whole["usage"]["prompt_tokens_details"]["cached_tokens"], 0, "{whole}");
        assert!(sse.contains(&format!("\"cached_tokens\":{}", n_prompt - 1)), "the usage chunk: {sse}");
    }
    let (code, models) = (200, agent().get(&format!("{}/v1/models", s.base)).call().unwrap().into_string().unwrap());
    assert_eq!((code, json(&models)["data"][0]["id"].as_str()), (200, Some("qwen-coder")));
    let metrics = agent().get(&format!("{}/metrics", s.base)).call().unwrap().into_string().unwrap();
    assert!(metrics.contains("specrun_requests_total{outcome=\"ok\"} 4"), "{metrics}");
    assert!(metrics.contains("specrun_time_to_first_token_seconds_count 4"), "{metrics}");
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}: {metrics}"));
        line[name.len() + 1..].parse().unwrap()
    };
    // four requests one after another: each one's prompt read in a shared round of its own
    // (nothing else running), then every round carried its token and draft
    let (rounds, decoded) = (value("specrun_shared_rounds_total"), value("specrun_decoded_tokens_total"));
    let prompt_rounds = value("specrun_prompt_rounds_total");
    assert_eq!(prompt_rounds, 4.0, "{metrics}");
    let cached = value("specrun_prompt_cached_tokens_total");
    assert!(cached > 0.0, "{metrics}");
    assert_eq!(value("specrun_prompt_in_rounds_tokens_total") + cached, value("specrun_prompt_tokens_total"), "{metrics}");
    assert!(value("specrun_prompt_shared_tokens_total") + value("specrun_prompt_restored_tokens_total") <= cached, "{metrics}");
    assert!(rounds > prompt_rounds && decoded >= rounds - prompt_rounds, "{metrics}");
    assert!(value("specrun_rounds_total") >= rounds, "{metrics}");
    assert!(value("specrun_decode_seconds_total") > 0.0, "{metrics}");
    // the plans of the rounds priced with known costs, against what those rounds did
    let (expected, emitted) = (value("specrun_planned_tokens_expected_total"), value("specrun_planned_tokens_total"));
    assert!(expected > 0.0 && emitted > 0.0 && emitted <= value("specrun_completion_tokens_total"), "{metrics}");
    assert!(value("specrun_planned_seconds_total") > 0.0 && value("specrun_planned_seconds_expected_total") > 0.0, "{metrics}");
}

#[test]
fn eight_concurrent_clients_get_the_sequential_texts() {
    let s = start(&["--parallel", "4"]);
    let bodies: Vec<String> = (0..8)
        .map(|i| chat_body(&format!("request number {i}: {}", "words ".repeat(i)), &format!(r#", "max_tokens": {}"#, 8 + 5 * i)))
        .collect();
    let sequential: Vec<String> = bodies.iter().map(|b| text_of(&json(&post(&s, "/v1/chat/completions", b).1))).collect();
    let concurrent: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = bodies.iter().map(|b| scope.spawn(|| post(&s, "/v1/chat/completions", b))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .map(|(code, body)| {
                assert_eq!(code, 200, "{body}");
                text_of(&json(&body))
            })
            .collect()
    });
    assert_eq!(concurrent, sequential);
}

/// Four clients ask about one long document at once: the first request reads it, the other
/// three wait for it and share its cells instead of reading it again; every answer is the one
/// a server that shares nothing gives.
#[test]
fn requests_that_arrive_together_read_their_common_document_once() {
    let document = (0..150).map(|i| format!("line {i} of the report.")).collect::<Vec<_>>().join(" ");
    let bodies: Vec<String> =
        (0..4).map(|i| chat_body(&format!("{document}\nQuestion {i}: what does it say?"), r#", "max_tokens": 6"#)).collect();
    let ask_together = |s: &Server| -> Vec<serde_json::Value> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = bodies.iter().map(|b| scope.spawn(|| post(s, "/v1/chat/completions", b))).collect();
            handles
                .into_iter()
                .map(|h| {
                    let (code, body) = h.join().unwrap();
                    assert_eq!(code, 200, "{body}");
                    json(&body)
                })
                .collect()
        })
    };
    // 100 ms a decode: the first request reads the document over several decodes, and the
    // others arrive long before it has finished
    let slow = ["--parallel", "4", "--mock-delay-ms", "100", "--prefill-chunk", "16"];
    let sharing = start(&slow);
    let shared = ask_together(&sharing);
    let metrics = agent().get(&format!("{}/metrics", sharing.base)).call().unwrap().into_string().unwrap();
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}: {metrics}"));
        line[name.len() + 1..].parse().unwrap()
    };
    let n_prompt = shared[0]["usage"]["prompt_tokens"].as_f64().unwrap();
    let n_shared = value("specrun_prompt_shared_tokens_total");
    assert!(n_shared >= 3.0 * (n_prompt - 64.0), "three requests share the document: {n_shared} of {n_prompt}\n{metrics}");
    assert_eq!(value("specrun_prompt_cached_tokens_total"), n_shared, "{metrics}");
    let cached: f64 = shared.iter().map(|r| r["usage"]["prompt_tokens_details"]["cached_tokens"].as_f64().unwrap()).sum();
    assert_eq!(cached, n_shared, "usage counts the shared tokens as cached");
    drop(sharing);
    let apart = start(&[&slow[..], &["--prompt-cache", "off", "--cache-ram", "0"]].concat());
    let alone = ask_together(&apart);
    let metrics = agent().get(&format!("{}/metrics", apart.base)).call().unwrap().into_string().unwrap();
    assert!(metrics.contains("specrun_prompt_shared_tokens_total 0"), "{metrics}");
    let texts = |rs: &[serde_json::Value]| rs.iter().map(text_of).collect::<Vec<_>>();
    assert_eq!(texts(&shared), texts(&alone));
}

/// Open a stream and read its first event; the reader is returned (drop it to disconnect).
fn open_stream(s: &Server, max_tokens: usize) -> Box<dyn BufRead + Send> {
    let r = agent()
        .post(&format!("{}/v1/completions", s.base))
        .set("Content-Type", "application/json")
        .send_string(&format!(r#"{{"prompt": "a long one", "max_tokens": {max_tokens}, "stream": true, "ignore_eos": true}}"#))
        .unwrap();
    let mut reader: Box<dyn BufRead + Send> = Box::new(BufReader::new(r.into_reader()));
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    reader
}

#[test]
fn a_client_that_leaves_frees_its_slot_and_a_full_queue_answers_503() {
    // one slot, one place in the queue, 20 ms per decode: a 2000-token stream takes 40 s
    let s = start(&["--parallel", "1", "--queue", "1", "--mock-delay-ms", "20"]);
    let stream = open_stream(&s, 2000);
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| post(&s, "/v1/completions", r#"{"prompt": "short", "max_tokens": 4}"#));
        // the slot is busy and, once the waiting request is queued, the queue is full
        std::thread::sleep(Duration::from_millis(500));
        let (code, body) = match agent().post(&format!("{}/v1/completions", s.base)).send_string(r#"{"prompt": "x", "max_tokens": 2}"#) {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(c, r)) => {
                assert_eq!(r.header("Retry-After"), Some("1"));
                (c, r.into_string().unwrap())
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(code, 503, "{body}");
        assert_eq!(json(&body)["error"]["code"], "overloaded");
        let t0 = Instant::now();
        drop(stream);
        let (code, body) = waiting.join().unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(t0.elapsed() < Duration::from_secs(20), "the waiting request got the slot after the disconnect");
    });
    let metrics = agent().get(&format!("{}/metrics", s.base)).call().unwrap().into_string().unwrap();
    assert!(metrics.contains("specrun_requests_total{outcome=\"cancelled\"} 1"), "{metrics}");
    assert!(metrics.contains("specrun_requests_total{outcome=\"rejected\"} 1"), "{metrics}");
    assert!(metrics.contains("specrun_queue_depth 0"), "{metrics}");
}

#[test]
fn bad_input_gets_an_openai_error_and_the_server_stays_up() {
    let s = start(&["-c", "256"]);
    let long = "word ".repeat(600);
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("/v1/chat/completions", b"{not json".to_vec(), 400, None),
        ("/v1/chat/completions", b"[1, 2]".to_vec(), 400, None),
        ("/v1/chat/completions", br#"{"messages": "hi"}"#.to_vec(), 400, Some("messages")),
        ("/v1/chat/completions", chat_body("hi", r#", "max_tokens": "many""#).into_bytes(), 400, Some("max_tokens")),
        ("/v1/chat/completions", chat_body("hi", r#", "max_tokens": 0"#).into_bytes(), 400, Some("max_tokens")),
        ("/v1/chat/completions", chat_body("hi", r#", "max_tokens": 100000000000"#).into_bytes(), 400, Some("max_tokens")),
        ("/v1/chat/completions", chat_body("hi", r#", "temperature": -2"#).into_bytes(), 400, Some("temperature")),
        ("/v1/chat/completions", chat_body("hi", r#", "n": 17, "stream": true"#).into_bytes(), 400, Some("n")),
        ("/v1/chat/completions", chat_body("hi", r#", "logprobs": "yes""#).into_bytes(), 400, Some("logprobs")),
        ("/v1/chat/completions", chat_body("hi", r#", "tool_choice": "required""#).into_bytes(), 400, Some("tool_choice")),
        ("/v1/chat/completions", chat_body("hi", r#", "tools": [{"type": "retrieval"}]"#).into_bytes(), 400, Some("tools[0]")),
        ("/v1/completions", br#"{"prompt": "x", "tools": [{"type": "function", "function": {"name": "f"}}]}"#.to_vec(), 400, Some("tools")),
        ("/v1/chat/completions", chat_body("hi", r#", "presence_penalty": 5"#).into_bytes(), 400, Some("presence_penalty")),
        ("/v1/chat/completions", chat_body(&long, "").into_bytes(), 400, Some("messages")),
        ("/v1/completions", b"{\"prompt\": \"\xff\xfe\"}".to_vec(), 400, None),
        ("/v1/completions", br#"{"prompt": 5}"#.to_vec(), 400, Some("prompt")),
        ("/v1/nothing", b"{}".to_vec(), 404, None),
    ];
    for (path, body, status, param) in cases {
        let r = agent().post(&format!("{}{path}", s.base)).set("Content-Type", "application/json").send_bytes(&body);
        let (code, text) = match r {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
            Err(e) => panic!("{e}"),
        };
        let what = String::from_utf8_lossy(&body);
        assert_eq!(code, status, "{path} {what}: {text}");
        let e = &json(&text)["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{text}");
        for key in ["type", "param", "code"] {
            assert!(e.get(key).is_some(), "{key} in {text}");
        }
        assert_eq!(e["param"].as_str(), param, "{path} {what}: {text}");
    }
    let too_long = post(&s, "/v1/chat/completions", &chat_body(&long, ""));
    assert_eq!(json(&too_long.1)["error"]["code"], "context_length_exceeded");
    // messages say the bound, and name the field the client wrote
    let long_text = post(&s, "/v1/completions", &format!(r#"{{"prompt": "{long}"}}"#));
    assert_eq!(json(&long_text.1)["error"]["param"], "prompt", "{}", long_text.1);
    let (_, text) = post(&s, "/v1/chat/completions", &chat_body("hi", r#", "max_tokens": 1e30"#));
    assert!(json(&text)["error"]["message"].as_str().unwrap().contains("in [1, 256]"), "{text}");
    let (_, text) = post(&s, "/v1/chat/completions", &chat_body("hi", r#", "seed": 18446744073709551616"#));
    assert!(json(&text)["error"]["message"].as_str().unwrap().contains("18446744073709551615"), "{text}");
    let (code, _) = post(&s, "/v1/chat/completions", &chat_body("still here?", r#", "max_tokens": 3"#));
    assert_eq!(code, 200);
    // what clients send by default and does not change the text is accepted; any model name
    // is served by the one pair unless --strict-model
    let extras = r#", "max_tokens": 2, "model": "gpt-4o", "metadata": {"a": "b"}, "store": false, "parallel_tool_calls": true, "tool_choice": "auto", "service_tier": "auto""#;
    let (code, text) = post(&s, "/v1/chat/completions", &chat_body("hi", extras));
    assert_eq!(code, 200, "{text}");
    let strict = start(&["--strict-model"]);
    let (code, text) = post(&strict, "/v1/chat/completions", &chat_body("hi", r#", "model": "gpt-4""#));
    assert_eq!((code, json(&text)["error"]["param"].as_str()), (404, Some("model")), "{text}");
}

#[test]
fn the_port_opens_while_the_models_load_and_health_says_so() {
    let config = repo("models.toml");
    let s = server::start_loading(&["--mock", "--mock-delay-ms", "3000", "--config", config.to_str().unwrap()], &[]);
    let (code, body) = match agent().get(&format!("{}/health", s.base)).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    };
    assert_eq!((code, json(&body)["status"].as_str()), (503, Some("loading")), "{body}");
    let (code, body) = post(&s, "/v1/chat/completions", &chat_body("hi", ""));
    assert_eq!((code, json(&body)["error"]["code"].as_str()), (503, Some("loading")), "{body}");
    // once loaded, the same port serves
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent().get(&format!("{}/health", s.base)).call().map(|r| r.status()).ok() != Some(200) {
        assert!(Instant::now() < deadline, "never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, body) = post(&s, "/v1/completions", r#"{"prompt": "hi", "max_tokens": 1}"#);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn cors_headers_only_for_the_origins_given() {
    let origin_of = |s: &Server, origin: &str| {
        let r = agent().get(&format!("{}/v1/models", s.base)).set("Origin", origin).call().unwrap();
        r.header("access-control-allow-origin").map(str::to_string)
    };
    let plain = start(&[]);
    assert_eq!(origin_of(&plain, "http://app.example"), None, "no CORS unless asked");
    let s = start_env(&["--cors-origin", "http://app.example"], &[("SPECRUN_API_KEY", "k")]);
    // a preflight needs no key and names what the page may send
    let pre = agent()
        .request("OPTIONS", &format!("{}/v1/chat/completions", s.base))
        .set("Origin", "http://app.example")
        .set("Access-Control-Request-Method", "POST")
        .set("Access-Control-Request-Headers", "authorization,content-type")
        .call()
        .unwrap();
    assert_eq!(pre.header("access-control-allow-origin"), Some("http://app.example"));
    assert!(
        pre.header("access-control-allow-headers").is_some_and(|h| h.contains("authorization")),
        "{:?}",
        pre.header("access-control-allow-headers")
    );
    let r =
        agent().get(&format!("{}/v1/models", s.base)).set("Origin", "http://app.example").set("Authorization", "Bearer k").call().unwrap();
    assert_eq!(r.header("access-control-allow-origin"), Some("http://app.example"));
    let other =
        agent().get(&format!("{}/v1/models", s.base)).set("Origin", "http://evil.example").set("Authorization", "Bearer k").call().unwrap();
    assert_eq!(other.header("access-control-allow-origin"), None);
    let any = start(&["--cors-origin", "*"]);
    assert_eq!(origin_of(&any, "http://anywhere.example").as_deref(), Some("*"));
    // a bad origin is one line naming the flag, before anything loads
    let out = Command::new(assert_cmd::cargo::cargo_bin("specrun"))
        .args(["serve", "--mock", "--port", "0", "--cors-origin", "bad\norigin"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cors-origin"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn n_choices_are_sampled_with_consecutive_seeds_and_usage_counts_the_prompt_once() {
    let s = start(&[]);
    let ask = |extra: &str| {
        let (code, body) = post(&s, "/v1/chat/completions", &chat_body("tell me something", extra));
        assert_eq!(code, 200, "{body}");
        json(&body)
    };
    let texts = |v: &serde_json::Value| -> Vec<String> {
        v["choices"].as_array().unwrap().iter().map(|c| c["message"]["content"].as_str().unwrap().to_string()).collect()
    };
    let three = ask(r#", "n": 3, "temperature": 0.9, "seed": 40, "max_tokens": 12"#);
    let indices: Vec<u64> = three["choices"].as_array().unwrap().iter().map(|c| c["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, vec![0, 1, 2]);
    let t = texts(&three);
    // choice i is what a single request with seed 40 + i gives
    for (i, text) in t.iter().enumerate() {
        let one = ask(&format!(r#", "temperature": 0.9, "seed": {}, "max_tokens": 12"#, 40 + i));
        assert_eq!(&texts(&one)[0], text, "choice {i}");
    }
    assert!(t[0] != t[1] || t[1] != t[2], "sampled choices with different seeds all equal: {t:?}");
    let one = ask(r#", "temperature": 0.9, "seed": 40, "max_tokens": 12"#);
    assert_eq!(three["usage"]["prompt_tokens"], one["usage"]["prompt_tokens"]);
    let completion: u64 = (0..3)
        .map(|i| {
            let v = ask(&format!(r#", "temperature": 0.9, "seed": {}, "max_tokens": 12"#, 40 + i));
            v["usage"]["completion_tokens"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(three["usage"]["completion_tokens"].as_u64(), Some(completion));
    // greedy choices are one text n times
    let greedy = texts(&ask(r#", "n": 2, "max_tokens": 8"#));
    assert_eq!(greedy[0], greedy[1]);
}

/// Streamed choices: chunks of the `n` choices interleave, told apart by `index`; each
/// choice's chunks joined are its text in the whole response, each ends with its finish
/// reason, and the usage chunk counts every choice's tokens.
#[test]
fn n_choices_stream_by_index_and_equal_the_whole_ones() {
    let s = start(&["--parallel", "2"]);
    let extra = r#", "n": 3, "temperature": 0.9, "seed": 7, "max_tokens": 16"#;
    let (code, whole) = post(&s, "/v1/chat/completions", &chat_body("tell me something", extra));
    assert_eq!(code, 200, "{whole}");
    let whole = json(&whole);
    let streamed_extra = format!(r#"{extra}, "stream": true, "stream_options": {{"include_usage": true}}"#);
    let (code, sse) = post(&s, "/v1/chat/completions", &chat_body("tell me something", &streamed_extra));
    assert_eq!(code, 200, "{sse}");
    let data: Vec<&str> = sse.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{sse}");
    let (mut texts, mut finishes, mut roles) = (vec![String::new(); 3], vec![0; 3], vec![0; 3]);
    let mut usage = None;
    for d in &data[..data.len() - 1] {
        let v = json(d);
        let Some(c) = v["choices"].get(0) else {
            usage = Some(v["usage"].clone());
            continue;
        };
        let i = c["index"].as_u64().unwrap() as usize;
        texts[i].push_str(c["delta"]["content"].as_str().unwrap_or(""));
        roles[i] += usize::from(c["delta"]["role"] == "assistant");
        finishes[i] += usize::from(c["finish_reason"].is_string());
    }
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(text, whole["choices"][i]["message"]["content"].as_str().unwrap(), "choice {i}");
    }
    assert_eq!((finishes, roles), (vec![1; 3], vec![1; 3]), "one role and one finish per choice");
    assert_eq!(usage.unwrap()["completion_tokens"], whole["usage"]["completion_tokens"]);
}

fn weather_tools() -> &'static str {
    r#""tools": [{"type": "function", "function": {"name": "get_weather", "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"], "additionalProperties": false}}},
      {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}, "additionalProperties": false}}}]"#
}

/// The calls of a whole chat response: (name, arguments as JSON).
fn calls_of(v: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().cloned().unwrap_or_default();
    calls
        .iter()
        .map(|c| {
            assert_eq!(c["type"], "function");
            assert!(c["id"].as_str().is_some_and(|id| !id.is_empty()));
            let args = c["function"]["arguments"].as_str().unwrap();
            (c["function"]["name"].as_str().unwrap().to_string(), serde_json::from_str(args).unwrap())
        })
        .collect()
}

/// Tools: a required call is forced into the tools' schemas and answered as `tool_calls`
/// (whole and streamed alike); a named tool is the one called; "none" shows no tools; earlier
/// calls and tool results are part of the prompt; bad combinations are named.
#[test]
fn tool_calls_follow_the_tools_schemas_whole_and_streamed() {
    let s = start(&[]);
    let ask = |extra: &str| {
        let (code, body) = post(&s, "/v1/chat/completions", &chat_body("weather in Oslo?", &format!(", {}{extra}", weather_tools())));
        assert_eq!(code, 200, "{body}");
        body
    };
    // one call (the mock, a random model, would call on in parallel until max_tokens)
    let whole = json(&ask(r#", "tool_choice": "required", "parallel_tool_calls": false, "max_tokens": 200"#));
    assert_eq!(whole["choices"][0]["finish_reason"], "tool_calls", "{whole}");
    assert!(whole["choices"][0]["message"]["content"].is_null(), "{whole}");
    let calls = calls_of(&whole);
    assert_eq!(calls.len(), 1, "{whole}");
    for (name, args) in &calls {
        match name.as_str() {
            "get_weather" => {
                assert!(args["city"].as_str().is_some_and(|c| c.chars().count() <= 12), "{args}");
                assert!(args["unit"] == "c" || args["unit"] == "f", "{args}");
                assert_eq!(args.as_object().unwrap().len(), 2, "{args}");
            }
            "now" => assert_eq!(args, &serde_json::json!({})),
            other => panic!("called {other}, not a tool"),
        }
    }
    // streamed: the same calls, as a delta with indexed entries, then finish "tool_calls"
    let sse = ask(r#", "tool_choice": "required", "parallel_tool_calls": false, "max_tokens": 200, "stream": true"#);
    let (content, finish) = join_stream(&sse);
    assert_eq!((content.as_str(), finish.as_str()), ("", "tool_calls"), "{sse}");
    let streamed: Vec<(String, serde_json::Value)> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .flat_map(|d| json(d)["choices"][0]["delta"]["tool_calls"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            (
                c["function"]["name"].as_str().unwrap().to_string(),
                serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(streamed, calls, "greedy: the streamed calls are the whole response's");
    // a named tool, one call
    let named = json(&ask(r#", "tool_choice": {"type": "function", "function": {"name": "now"}}, "parallel_tool_calls": false"#));
    assert_eq!(calls_of(&named), vec![("now".to_string(), serde_json::json!({}))], "{named}");
    // none: the tools are not shown (the prompt is the plain chat's) and nothing is read as a call
    let none = json(&ask(r#", "tool_choice": "none", "max_tokens": 8"#));
    let (code, plain) = post(&s, "/v1/chat/completions", &chat_body("weather in Oslo?", r#", "max_tokens": 8"#));
    assert_eq!(code, 200);
    assert_eq!(none["usage"]["prompt_tokens"], json(&plain)["usage"]["prompt_tokens"], "{none}");
    assert!(none["choices"][0]["message"].get("tool_calls").is_none(), "{none}");
    // auto: the model chose text here; the tools were shown
    let auto = json(&ask(r#", "max_tokens": 8"#));
    assert!(auto["usage"]["prompt_tokens"].as_u64() > none["usage"]["prompt_tokens"].as_u64(), "{auto}");
    // a call made and answered: the conversation goes on
    let follow_up = format!(
        r#"{{"messages": [{{"role": "user", "content": "weather in Oslo?"}},
            {{"role": "assistant", "content": null, "tool_calls": [{{"id": "call_1", "type": "function", "function": {{"name": "get_weather", "arguments": "{{\"city\": \"Oslo\", \"unit\": \"c\"}}"}}}}]}},
            {{"role": "tool", "tool_call_id": "call_1", "content": "4 C, rain"}}], {}, "max_tokens": 8}}"#,
        weather_tools()
    );
    let (code, body) = post(&s, "/v1/chat/completions", &follow_up);
    assert_eq!(code, 200, "{body}");
    assert!(json(&body)["usage"]["prompt_tokens"].as_u64() > auto["usage"]["prompt_tokens"].as_u64(), "{body}");
    for (extra, param) in [
        (r#", "tool_choice": "required", "response_format": {"type": "json_object"}"#, "tool_choice"),
        (r#", "tool_choice": {"type": "function", "function": {"name": "later"}}"#, "tool_choice"),
        (r#", "tool_choice": "sometimes""#, "tool_choice"),
    ] {
        let (code, text) = post(&s, "/v1/chat/completions", &chat_body("x", &format!(", {}{extra}", weather_tools())));
        assert_eq!((code, json(&text)["error"]["param"].as_str()), (400, Some(param)), "{extra}: {text}");
    }
}

#[test]
fn logprobs_come_one_per_token_in_both_response_shapes() {
    let s = start(&[]);
    let (code, body) = post(&s, "/v1/chat/completions", &chat_body("hi", r#", "max_tokens": 6, "logprobs": true, "top_logprobs": 3"#));
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    let text = text_of(&v);
    // the entries spell the text, each with three alternatives, the greedy choice the first
    let spelled: String = content.iter().map(|e| e["token"].as_str().unwrap()).collect();
    assert_eq!(spelled, text);
    for e in content {
        let lp = e["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0, "{e}");
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["token"], e["token"], "greedy takes the most likely token");
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-6);
        assert_eq!(e["bytes"].as_array().unwrap().len(), e["token"].as_str().unwrap().len());
    }
    // without asking: null, as OpenAI
    let (_, body) = post(&s, "/v1/chat/completions", &chat_body("hi", r#", "max_tokens": 3"#));
    assert!(json(&body)["choices"][0]["logprobs"].is_null());
    let (code, body) = post(&s, "/v1/completions", r#"{"prompt": "hi", "max_tokens": 4, "logprobs": 2}"#);
    assert_eq!(code, 200, "{body}");
    let lp = &json(&body)["choices"][0]["logprobs"];
    let n = lp["tokens"].as_array().unwrap().len();
    assert!(n > 0);
    assert_eq!((lp["token_logprobs"].as_array().unwrap().len(), lp["text_offset"].as_array().unwrap().len()), (n, n));
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    // streamed: each text chunk carries its tokens' entries, the same as the whole response's
    let whole: Vec<serde_json::Value> = content.to_vec();
    let (code, sse) =
        post(&s, "/v1/chat/completions", &chat_body("hi", r#", "max_tokens": 6, "logprobs": true, "top_logprobs": 3, "stream": true"#));
    assert_eq!(code, 200, "{sse}");
    let mut streamed = Vec::new();
    for d in sse.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]") {
        let v = json(d);
        if let Some(c) = v["choices"][0]["logprobs"]["content"].as_array() {
            let delta = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
            assert_eq!(c.iter().map(|e| e["token"].as_str().unwrap()).collect::<String>(), delta, "a chunk's entries spell its text");
            streamed.extend(c.iter().cloned());
        }
    }
    assert_eq!(streamed, whole);
    // out of range; alternatives without logprobs
    for (extra, param) in [(r#", "logprobs": true, "top_logprobs": 21"#, "top_logprobs"), (r#", "top_logprobs": 2"#, "top_logprobs")] {
        let (code, body) = post(&s, "/v1/chat/completions", &chat_body("hi", extra));
        assert_eq!((code, json(&body)["error"]["param"].as_str()), (400, Some(param)), "{extra}: {body}");
    }
    let (code, body) = post(&s, "/v1/completions", r#"{"prompt": "hi", "logprobs": 6}"#);
    assert_eq!((code, json(&body)["error"]["param"].as_str()), (400, Some("logprobs")), "{body}");
}

#[test]
fn the_api_key_guards_every_route_but_health() {
    let s = start_env(&[], &[("SPECRUN_API_KEY", "sekrit")]);
    let get = |path: &str, key: Option<&str>| {
        let mut r = agent().get(&format!("{}{path}", s.base));
        if let Some(k) = key {
            r = r.set("Authorization", &format!("Bearer {k}"));
        }
        match r.call() {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(c, _)) => c,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(get("/health", None), 200);
    assert_eq!(get("/v1/models", None), 401);
    assert_eq!(get("/metrics", Some("wrong")), 401);
    assert_eq!(get("/v1/models", Some("sekrit")), 200);
    let (code, body) = post(&s, "/v1/completions", r#"{"prompt": "hi", "max_tokens": 2}"#);
    assert_eq!((code, json(&body)["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    let (code, _) = post_with(&s, "/v1/completions", r#"{"prompt": "hi", "max_tokens": 2}"#, &[("Authorization", "Bearer sekrit")]);
    assert_eq!(code, 200);
}

#[cfg(unix)]
#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let mut s = start(&["--mock-delay-ms", "20", "--grace", "20"]);
    let mut stream = open_stream(&s, 60);
    unsafe {
        libc::kill(s.child.id() as i32, libc::SIGTERM);
    }
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    assert!(rest.contains("\"finish_reason\":\"length\""), "the stream ran to its end: {rest}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

/// A client that sends half a request (or nothing) cannot hold a connection: the server closes
/// it once the header timeout passes, and answers others meanwhile; a body too large, a wrong
/// method and a content type that only begins like JSON's get the JSON error object.
#[test]
fn slow_clients_are_closed_and_every_refusal_is_json() {
    use std::io::{Read, Write};
    let s = start(&[]);
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut half = std::net::TcpStream::connect(&addr).unwrap();
    half.write_all(b"POST /v1/chat/compl").unwrap();
    let idle = std::net::TcpStream::connect(&addr).unwrap();
    let (code, _) = post(&s, "/v1/chat/completions", &chat_body("still served", r#", "max_tokens": 2"#));
    assert_eq!(code, 200);
    let t0 = std::time::Instant::now();
    for mut c in [half, idle] {
        c.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        assert!(t0.elapsed() < std::time::Duration::from_secs(25), "a stalled connection was held {:?}", t0.elapsed());
    }
    let big = format!(r#"{{"messages": [{{"role": "user", "content": "{}"}}]}}"#, "x".repeat(9 << 20));
    let (code, text) = post(&s, "/v1/chat/completions", &big);
    assert_eq!((code, json(&text)["error"]["code"].as_str()), (413, Some("request_too_large")), "{}", &text[..text.len().min(200)]);
    let r = agent().get(&format!("{}/v1/chat/completions", s.base)).call();
    let Err(ureq::Error::Status(405, r)) = r else { panic!("GET on a POST route: {r:?}") };
    assert_eq!(json(&r.into_string().unwrap())["error"]["code"], "method_not_allowed");
    let r = agent()
        .post(&format!("{}/v1/chat/completions", s.base))
        .set("Content-Type", "application/jsonEVIL")
        .send_string(&chat_body("x", ""));
    let Err(ureq::Error::Status(415, _)) = r else { panic!("application/jsonEVIL: {r:?}") };
}

/// A request that ends on a stop string leaves its prompt's cells: the same prompt again reads
/// only its last token.
#[test]
fn a_request_ended_by_a_stop_string_leaves_its_prompt_cached() {
    let s = start(&["--parallel", "1"]);
    let (_, text) = post(&s, "/v1/chat/completions", &chat_body("tell me something long", r#", "max_tokens": 24"#));
    let full = text_of(&json(&text));
    let stop: String = full.chars().nth(12).expect("24 tokens of text").to_string();
    let with_stop = format!(r#", "max_tokens": 24, "stop": [{}]"#, serde_json::to_string(&stop).unwrap());
    let first = json(&post(&s, "/v1/chat/completions", &chat_body("tell me something long", &with_stop)).1);
    assert_eq!(first["choices"][0]["finish_reason"], "stop", "{first}");
    let again = json(&post(&s, "/v1/chat/completions", &chat_body("tell me something long", &with_stop)).1);
    let (prompt, cached) =
        (again["usage"]["prompt_tokens"].as_u64().unwrap(), again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap());
    assert_eq!(cached, prompt - 1, "{again}");
    assert_eq!(text_of(&again), text_of(&first));
}

/// Structured output on both routes: response_format (json_schema, json_object) and
/// llama-server's json_schema / grammar fields; every finished output follows its constraint;
/// one that does not compile is a 400 naming the field.
#[test]
fn constrained_requests_follow_their_schema_and_bad_ones_are_named() {
    let s = start(&[]);
    let schema = r#"{"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 999}, "tag": {"enum": ["x", "y"]}}, "required": ["ok", "n", "tag"], "additionalProperties": false}"#;
    let rf = format!(
        r#", "max_tokens": 100, "response_format": {{"type": "json_schema", "json_schema": {{"name": "r", "schema": {schema}, "strict": true}}}}"#
    );
    for (path, body) in [
        ("/v1/chat/completions", chat_body("give json", &rf)),
        ("/v1/completions", format!(r#"{{"prompt": "give json"{rf}}}"#)),
        ("/v1/chat/completions", chat_body("give json", &format!(r#", "max_tokens": 100, "json_schema": {schema}"#))),
    ] {
        let (code, text) = post(&s, path, &body);
        assert_eq!(code, 200, "{text}");
        let v = json(&text);
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{text}");
        let out: serde_json::Value = serde_json::from_str(&text_of(&v)).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        assert!(out["ok"].is_boolean() && out["n"].as_u64().is_some_and(|n| n <= 999) && (out["tag"] == "x" || out["tag"] == "y"), "{out}");
        assert_eq!(out.as_object().unwrap().len(), 3, "{out}");
    }
    let (code, text) = post(&s, "/v1/chat/completions", &chat_body("yes or no", r#", "grammar": "root ::= \"yes\" | \"no\"""#));
    assert_eq!(code, 200, "{text}");
    assert!(["yes", "no"].contains(&text_of(&json(&text)).as_str()), "{text}");
    // a regex as batch records have it, and vLLM's guided fields
    for (extra, fits) in [
        (r#", "regex": "[A-Z]{2}-[0-9]{3}""#, &(|t: &str| t.len() == 6 && t.as_bytes()[2] == b'-') as &dyn Fn(&str) -> bool),
        (r#", "guided_regex": "[0-9]{4}""#, &|t: &str| t.len() == 4 && t.bytes().all(|b| b.is_ascii_digit())),
        (r#", "guided_choice": ["red", "green \"lime\""]"#, &|t: &str| t == "red" || t == "green \"lime\""),
        (r#", "guided_grammar": "root ::= \"a\" [0-9]""#, &|t: &str| t.len() == 2 && t.starts_with('a')),
        (&format!(r#", "max_tokens": 100, "guided_json": {schema:?}"#), &|t: &str| {
            serde_json::from_str::<serde_json::Value>(t).is_ok_and(|v| v["ok"].is_boolean())
        }),
    ] {
        let (code, text) = post(&s, "/v1/chat/completions", &chat_body("x", extra));
        assert_eq!(code, 200, "{extra}: {text}");
        assert!(fits(&text_of(&json(&text))), "{extra}: {text}");
    }
    // a grammar that fails while generating (llguidance's lexer past its limits) fails its
    // own request, and the server goes on
    let (code, text) = post(&s, "/v1/completions", r#"{"prompt": "x", "max_tokens": 30, "grammar": "start: /a{1000}{1000}/"}"#);
    assert_eq!(code, 500, "{text}");
    assert!(json(&text)["error"]["message"].as_str().is_some_and(|m| m.contains("too many")), "{text}");
    let (code, text) = post(&s, "/v1/completions", r#"{"prompt": "x", "max_tokens": 3}"#);
    assert_eq!(code, 200, "{text}");
    for (extra, param) in [
        (
            r#", "response_format": {"type": "json_schema", "json_schema": {"name": "b", "schema": {"type": "nonsense"}}}"#,
            "response_format",
        ),
        (r#", "response_format": {"type": "xml"}"#, "response_format"),
        (r#", "grammar": "root ::= <[5]>""#, "grammar"),
        (r#", "json_schema": 5"#, "json_schema"),
        (r#", "grammar": "root ::= \"a\"", "json_schema": {}"#, "grammar"),
        (r#", "regex": "(?=a)a""#, "regex"),
        (r#", "guided_choice": []"#, "guided_choice"),
        (r#", "guided_choice": ["a", 1]"#, "guided_choice"),
        (r#", "guided_regex": 5"#, "guided_regex"),
        (r#", "guided_json": "not json""#, "guided_json"),
        (r#", "regex": "a", "guided_choice": ["a"]"#, "guided_choice"),
    ] {
        let (code, text) = post(&s, "/v1/chat/completions", &chat_body("x", extra));
        assert_eq!(code, 400, "{extra}: {text}");
        assert_eq!(json(&text)["error"]["param"], param, "{extra}: {text}");
    }
}

/// The official `openai` Python client against the server (ignored unless asked for:
/// `scripts/test.sh` installs the package and runs ignored tests).
#[test]
#[ignore = "needs the openai Python package: scripts/test.sh installs it"]
fn the_openai_python_client_works() {
    let python = std::env::var("SPECRUN_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = Command::new(&python).args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    assert!(has, "the openai Python package is missing for {python} (scripts/test.sh installs it)");
    let s = start(&["--api-key", "k"]);
    let out = Command::new(&python).arg(repo("tests/openai_client.py")).arg(format!("{}/v1", s.base)).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("openai client: ok"));
}

/// llama-server's text routes answer from the tokenizer without a slot: `/tokenize` and
/// `/detokenize` round-trip, `/apply-template` gives the prompt a chat completion reads,
/// `/props` says what runs; bad fields are JSON errors naming them.
#[test]
fn the_text_routes_tokenize_detokenize_and_apply_the_template() {
    let s = start(&["--parallel", "3"]);
    let (code, body) = post(&s, "/tokenize", r#"{"content": "hello world"}"#);
    assert_eq!(code, 200, "{body}");
    let tokens = json(&body)["tokens"].clone();
    assert!(tokens.as_array().is_some_and(|t| !t.is_empty()), "{body}");
    let (code, body) = post(&s, "/detokenize", &serde_json::json!({ "tokens": tokens }).to_string());
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["content"], "hello world");
    let (_, body) = post(&s, "/tokenize", r#"{"content": "ab", "with_pieces": true}"#);
    let pieces: String = json(&body)["tokens"].as_array().unwrap().iter().map(|p| p["piece"].as_str().unwrap().to_string()).collect();
    assert_eq!(pieces, "ab");
    let (code, body) = post(&s, "/apply-template", r#"{"messages": [{"role": "user", "content": "hi"}]}"#);
    assert_eq!(code, 200, "{body}");
    assert!(json(&body)["prompt"].as_str().unwrap().contains("hi"), "{body}");
    // with tools, the model's own Jinja template writes them
    let with_tools = r#"{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "now"}}]}"#;
    let (code, body) = post(&s, "/apply-template", with_tools);
    assert_eq!(code, 200, "{body}");
    let prompt = json(&body)["prompt"].as_str().unwrap().to_string();
    assert!(
        prompt.contains("<tools>{\"type\": \"function\", \"function\": {\"name\": \"now\"}}</tools>")
            && prompt.ends_with("<user>hi<assistant>"),
        "{prompt}"
    );
    let props = json(&agent().get(&format!("{}/props", s.base)).call().unwrap().into_string().unwrap());
    assert_eq!(props["total_slots"], 3);
    assert!(props["build_info"].as_str().unwrap().contains(env!("CARGO_PKG_VERSION")));
    for (path, body, field) in [
        ("/tokenize", r#"{"content": 5}"#, "content"),
        ("/detokenize", r#"{"tokens": [1, -2]}"#, "tokens"),
        ("/detokenize", r#"{"tokens": [99999999]}"#, "tokens"),
        ("/apply-template", r#"{"messages": [{"role": "wizard", "content": "x"}]}"#, "messages[0].role"),
    ] {
        let (code, text) = post(&s, path, body);
        assert_eq!(code, 400, "{path} {body}: {text}");
        assert_eq!(json(&text)["error"]["param"], field, "{text}");
    }
    let (code, text) = post(&s, "/tokenize", "{not json");
    assert_eq!(code, 400);
    assert!(json(&text)["error"]["message"].as_str().unwrap().contains("not valid JSON"));
}
