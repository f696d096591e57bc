//! The README's two commands stay true: CI runs exactly its test command, and the main command
//! only names files and subcommands that exist.

fn readme_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("```sh")
        .nth(1)
        .expect("a sh block")
        .split("```")
        .next()
        .unwrap();
    block
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn ci_runs_the_readme_test_command() {
    let commands = readme_commands();
    assert_eq!(
        commands.len(),
        2,
        "the README starts with two commands: {commands:?}"
    );
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == commands[1].trim()),
        "`.ci/run` must run `{}`",
        commands[1]
    );
}

#[test]
fn main_command_names_existing_files() {
    let main = &readme_commands()[0];
    for word in main.split_whitespace() {
        if word.starts_with("examples/") || word.starts_with("scripts/") {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(word);
            assert!(path.exists(), "{word} is named in the README but missing");
        }
    }
}
