use serde_json::json;

use super::*;

fn specs(value: serde_json::Value) -> Vec<ToolSpec> {
    serde_json::from_value(value).unwrap()
}

fn weather() -> Vec<ToolSpec> {
    specs(json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time"}}
    ]))
}

fn use_of(choice: serde_json::Value, parallel: Option<bool>) -> ToolUse {
    parse(Some(weather()), Some(&choice), parallel)
        .unwrap()
        .unwrap()
}

fn param_of(e: ApiError) -> String {
    e.param.unwrap_or_default()
}

#[test]
fn choices_parse_and_none_turns_tools_off() {
    assert_eq!(use_of(json!("auto"), None).choice, ToolChoice::Auto);
    assert_eq!(use_of(json!("required"), None).choice, ToolChoice::Required);
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    assert_eq!(
        use_of(named, None).choice,
        ToolChoice::Function("get_time".into())
    );
    assert!(parse(Some(weather()), Some(&json!("none")), None)
        .unwrap()
        .is_none());
    assert!(parse(None, None, None).unwrap().is_none());
}

#[test]
fn bad_tools_and_choices_name_their_field() {
    let e = |tools: serde_json::Value, choice: Option<serde_json::Value>| {
        param_of(parse(Some(specs(tools)), choice.as_ref(), None).unwrap_err())
    };
    let f = |name: &str| json!({"type": "function", "function": {"name": name}});
    assert_eq!(
        e(
            json!([{"type": "retrieval", "function": {"name": "a"}}]),
            None
        ),
        "tools[0].type"
    );
    assert_eq!(e(json!([f("a b")]), None), "tools[0].function.name");
    assert_eq!(e(json!([f("")]), None), "tools[0].function.name");
    assert_eq!(e(json!([f("a"), f("a")]), None), "tools[1].function.name");
    let bad_schema = json!([{"type": "function", "function": {"name": "a", "parameters": 3}}]);
    assert_eq!(e(bad_schema, None), "tools[0].function.parameters");
    assert_eq!(e(json!([f("a")]), Some(json!("sometimes"))), "tool_choice");
    let unknown = json!({"type": "function", "function": {"name": "b"}});
    assert_eq!(e(json!([f("a")]), Some(unknown)), "tool_choice");
    assert_eq!(e(json!([]), Some(json!("required"))), "tool_choice");
    let many: Vec<_> = (0..=MAX_TOOLS).map(|i| f(&format!("t{i}"))).collect();
    assert_eq!(e(json!(many), None), "tools");
}

#[test]
fn the_reply_schema_allows_the_callable_tools_only() {
    assert!(use_of(json!("auto"), None).reply_schema().is_none());
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    let schema = use_of(named, None).reply_schema().unwrap();
    let list = &schema["properties"]["tool_calls"];
    assert_eq!(list["maxItems"], 1);
    let calls = list["items"]["anyOf"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["properties"]["name"]["const"], "get_weather");
    assert_eq!(calls[0]["properties"]["arguments"]["required"][0], "city");
    // And llama.cpp turns it into a grammar.
    crate::engine::ResponseFormat::JsonSchema(schema)
        .grammar()
        .unwrap();
    let all = use_of(json!("required"), None).reply_schema().unwrap();
    assert!(all["properties"]["tool_calls"].get("maxItems").is_none());
    assert_eq!(
        all["properties"]["tool_calls"]["items"]["anyOf"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn replies_are_read_as_calls_in_the_shapes_models_write() {
    let tools = use_of(json!("auto"), None);
    let read = |text: &str| {
        tools.read_calls(text).map(|calls| {
            calls
                .into_iter()
                .map(|c| (c.function.name, c.function.arguments))
                .collect::<Vec<_>>()
        })
    };
    let paris = Some(vec![(
        "get_weather".to_string(),
        r#"{"city":"Paris"}"#.to_string(),
    )]);
    let ours = r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}"#;
    assert_eq!(read(ours), paris);
    assert_eq!(
        read(r#" {"name": "get_weather", "arguments": {"city": "Paris"}} "#),
        paris
    );
    assert_eq!(
        read("```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n```"),
        paris
    );
    let hermes = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"get_time\"}</tool_call>";
    let both = read(hermes).unwrap();
    assert_eq!(both.len(), 2);
    assert_eq!(both[1], ("get_time".to_string(), "{}".to_string()));
    // Plain text, unknown tools and other JSON are text.
    assert_eq!(read("It is sunny in Paris."), None);
    assert_eq!(read(r#"{"name": "rm_rf", "arguments": {}}"#), None);
    assert_eq!(read(r#"{"answer": 42}"#), None);
    assert_eq!(read(r#"{"tool_calls": []}"#), None);
    // One call at a time when parallel calls are off.
    let single = use_of(json!("auto"), Some(false));
    assert!(single.read_calls(hermes).is_none());
    // Each call gets its own id.
    let calls = tools.read_calls(hermes).unwrap();
    assert!(calls[0].id.starts_with("call_") && calls[0].id != calls[1].id);
}

#[test]
fn streamed_text_is_held_only_while_it_may_be_a_call() {
    for held in [
        "",
        "  ",
        "{",
        "{\"tool",
        "```",
        "``",
        "<tool",
        "<tool_call>{",
        "[",
    ] {
        assert!(may_be_call(held), "{held:?}");
    }
    for shown in ["The", " Sure", "<b>", "`x`"] {
        assert!(!may_be_call(shown), "{shown:?}");
    }
}

#[test]
fn history_turns_calls_into_the_reply_shape_and_results_into_text() {
    let calls: Vec<ToolCallIn> = serde_json::from_value(json!([
        {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}},
        {"id": "call_2", "type": "function",
            "function": {"name": "get_time", "arguments": "not json"}}
    ]))
    .unwrap();
    let text = history_calls(&calls);
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back["tool_calls"][0]["arguments"]["city"], "Oslo");
    assert_eq!(back["tool_calls"][1]["arguments"], "not json");
    // What the model wrote this way is read back as the same calls.
    let tools = use_of(json!("auto"), None);
    assert_eq!(tools.read_calls(&text).unwrap().len(), 2);
    assert_eq!(
        tool_result(Some("get_weather"), "call_1", "12 C"),
        "Result of the tool call call_1 (get_weather):\n12 C"
    );
}

#[test]
fn the_instruction_lists_every_tool_and_the_choice() {
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    let text = use_of(named, Some(false)).instruction();
    assert!(text.contains("\"get_weather\"") && text.contains("\"get_time\""));
    assert!(text.contains("You must call the tool \"get_time\""));
    assert!(text.contains("one call at a time"));
    assert!(use_of(json!("auto"), None)
        .instruction()
        .contains("answer in plain text"));
}
