//! The `dms` extension of chat requests through the handler's conversion and `Router::oneshot`:
//! `dms_role` marks question and evidence, and the server's default mode applies to requests
//! that name none.

use super::*;

/// The engine request of a chat body, through the same conversion as the handler.
fn converted(
    body: &str,
    state: &AppState,
) -> Result<llama_dms::engine::GenerateRequest, llama_dms::api::ApiError> {
    let req: llama_dms::api::types::GenerationRequest = serde_json::from_str(body).unwrap();
    llama_dms::api::chat::to_engine_request(req, state, 256)
}

#[tokio::test]
async fn dms_role_marks_question_and_evidence() {
    use llama_dms::engine::ContentPart as Part;
    let app = app_with(engine(4), &[]);
    let png = data_uri(&common::png(16, 16, [255, 0, 0]), "image/png");
    let content = json!([
        {"type": "text", "text": "My friend says it is blue.", "dms_role": "evidence"},
        image_part(png),
        {"type": "text", "text": "What colour is it?", "dms_role": "question"},
        {"type": "text", "text": "Answer in one word.", "dms_role": null},
        {"type": "text", "text": "No mark."}
    ]);
    let state = AppState::new(Vec::new(), Limits::default());
    let r = converted(&chat(content.clone(), json!({})), &state).unwrap();
    let parts = &r.messages[0].content;
    assert_eq!(
        parts[0],
        Part::Evidence("My friend says it is blue.".into())
    );
    assert!(matches!(parts[1], Part::Image(_)));
    assert_eq!(parts[2], Part::Question("What colour is it?".into()));
    assert_eq!(parts[3], Part::Text("Answer in one word.".into()));
    assert_eq!(parts[4], Part::Text("No mark.".into()));

    for dms in [
        json!({"mode": "fixed", "weights": {"images": [1.0], "text": 0.5}}),
        json!({"mode": "rule"}),
    ] {
        let body = chat(content.clone(), json!({"dms": dms}));
        let (s, v, _) = post_chat(&app, Some(body), None).await;
        assert_eq!(s, StatusCode::OK, "{dms}: {v}");
        assert!(v["dms"]["weights"].is_object(), "{v}");
        assert!(v["dms"]["evidence_tokens"].as_u64() > Some(0), "{v}");
    }
    // The marks reach the engine: the same text marked as question has no evidence to weigh.
    let mut questions = content.clone();
    for part in questions.as_array_mut().unwrap() {
        if part["type"] == "text" {
            part["dms_role"] = json!("question");
        }
    }
    let body = chat(questions, json!({"dms": {"mode": "rule"}}));
    let (s, v, _) = post_chat(&app, Some(body), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["dms"]["evidence_tokens"], 0, "{v}");

    let text = |role: Value| json!({"type": "text", "text": "hi", "dms_role": role});
    let user = |parts: Value| json!({"role": "user", "content": parts});
    let cases = [
        (
            "unknown value",
            vec![user(json!([text(json!("context"))]))],
            "messages[0].content[0].dms_role",
        ),
        (
            "capitals",
            vec![user(
                json!([{"type": "text", "text": "a"}, text(json!("QUESTION"))]),
            )],
            "messages[0].content[1].dms_role",
        ),
        (
            "empty string",
            vec![user(json!([text(json!(""))]))],
            "messages[0].content[0].dms_role",
        ),
        (
            "a number",
            vec![user(json!([text(json!(1))]))],
            "messages[0].content[0].dms_role",
        ),
        (
            "an object",
            vec![user(json!([text(json!({"role": "evidence"}))]))],
            "messages[0].content[0].dms_role",
        ),
        (
            "in a system message",
            vec![
                json!({"role": "system", "content": [text(json!("evidence"))]}),
                user(json!("hi")),
            ],
            "messages[0].content[0].dms_role",
        ),
        (
            "in an assistant message",
            vec![
                user(json!("hi")),
                json!({"role": "assistant", "content": [text(json!("question"))]}),
                user(json!("and?")),
            ],
            "messages[1].content[0].dms_role",
        ),
    ];
    for (case, messages, param) in cases {
        let body = json!({"messages": messages, "max_tokens": 4}).to_string();
        let (s, v, _) = post_chat(&app, Some(body), None).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, case);
        assert_eq!(v["error"]["param"], param, "{case}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{case}: {v}");
    }
}

#[tokio::test]
async fn the_default_dms_mode_applies_to_requests_without_one() {
    let png = data_uri(&common::png(16, 16, [0, 200, 0]), "image/png");
    let content =
        json!([image_part(png), {"type": "text", "text": "I think it is red. What colour?"}]);
    let rule = AppState::new(Vec::new(), Limits::default())
        .with_default_dms(llama_dms::engine::DmsMode::Rule);
    rule.set_engine(engine(4));
    let mode = |extra: Value| {
        converted(&chat(content.clone(), extra), &rule)
            .unwrap()
            .dms
            .mode
    };
    use llama_dms::engine::DmsMode;
    assert_eq!(mode(json!({})), DmsMode::Rule, "no dms object");
    assert_eq!(mode(json!({"dms": {}})), DmsMode::Rule, "no mode");
    assert_eq!(
        mode(json!({"dms": {"scheduler": "rule-default"}})),
        DmsMode::Rule,
        "a scheduler without a mode"
    );
    assert_eq!(
        mode(json!({"dms": {"mode": "off"}})),
        DmsMode::Off,
        "the request wins"
    );
    assert_eq!(
        mode(json!({"dms": {"weights": {"images": [1.0], "text": 1.0}}})),
        DmsMode::Fixed,
        "weights without a mode are fixed"
    );
    let app = router(rule, &[]);
    let (s, v, _) = call(&app, "GET", "/v1/dms/schedulers", None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["default_mode"], "rule");
    let (s, v, _) = post_chat(&app, Some(chat(content, json!({}))), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["dms"]["mode"], "rule", "{v}");
    assert!(v["dms"]["signals"].is_object(), "{v}");

    let app = app_with(engine(4), &[]);
    let (_, v, _) = call(&app, "GET", "/v1/dms/schedulers", None, None).await;
    assert_eq!(v["default_mode"], "off", "off unless set: {v}");
}
