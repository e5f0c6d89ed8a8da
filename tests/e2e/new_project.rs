//! `sockgate new`: for every language, a new project builds with its real
//! toolchain exactly as its README says, and the gateway serves the result
//! (it echoes); and the refusals (non-empty directory, invalid name,
//! unknown language).
//!
//! The toolchains are those guests/build-lang.sh installs for the example
//! guests (componentize-py, Go and Zig under guests/target/lang/, componentize-qjs
//! in guests/js/node_modules, tsc in guests/ts/node_modules, Debian's
//! clang-16), pointed to instead of installed again: the README's "Set up"
//! step is the only one not run.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::echo::{pattern, round_trip};
use crate::languages::{Lang, language_tests};
use crate::support::{
    Gateway, ScratchDir, lang_guest, root, run_expecting_failure, shared_cache_dir,
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The project name the tests create: with a hyphen, which Rust turns
/// into an underscore in the `.wasm` name.
const NAME: &str = "hello-app";

language_tests! {
    languages: [
        rust: Rust,
        python: Python,
        js: Js,
        c: C,
        zig: Zig,
        go: Go,
        ts: Ts,
        rust_events: RustEvents,
        c_events: CEvents,
        python_events: PythonEvents,
        js_events: JsEvents,
    ],
    tests: [a_new_project_builds_as_its_readme_says_and_echoes],
}

/// Runs `sockgate ARGS` in `cwd` to completion.
fn sockgate(cwd: &Path, args: &[&OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sockgate"))
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("cannot run sockgate")
}

/// The lines of the first ```` ```sh ```` block under `## <section>` of a
/// README.
fn readme_commands(readme: &str, section: &str) -> Vec<String> {
    let heading = format!("## {section}");
    let mut lines = readme.lines().skip_while(|l| l.trim() != heading).skip(1);
    assert!(
        lines.by_ref().any(|l| l.trim() == "```sh"),
        "no ```sh block under {heading} in:\n{readme}"
    );
    lines
        .take_while(|l| l.trim() != "```")
        .map(str::to_owned)
        .collect()
}

/// Where cargo builds Rust test projects: kept between runs, so that
/// wit-bindgen is compiled once rather than per test run.
fn rust_target_dir() -> PathBuf {
    root().join("target/sockgate-test-new-rust")
}

/// The environment that makes `lang`'s toolchain (as build-lang.sh
/// installed it) and `sockgate` reachable, as a README's set-up would.
fn toolchain_env(lang: Lang, project: &Path, command: &mut Command) {
    let sockgate_dir = Path::new(env!("CARGO_BIN_EXE_sockgate")).parent().unwrap();
    let mut path = vec![sockgate_dir.to_path_buf()];
    match lang {
        Lang::Rust | Lang::RustEvents | Lang::RustEventsV2 => {
            command.env("CARGO_TARGET_DIR", rust_target_dir());
        }
        Lang::Python | Lang::PythonEvents => {
            lang_guest("python", "echo"); // build-lang.sh installed the toolchain
            let toolchain = root().join("guests/target/lang/python-toolchain");
            path.push(toolchain.join("bin"));
            command.env("PYTHONPATH", toolchain);
        }
        Lang::Js | Lang::JsEvents => {
            lang_guest("js", "echo");
            // What `npm install` would make: the same pinned componentize-qjs.
            std::os::unix::fs::symlink(
                root().join("guests/js/node_modules"),
                project.join("node_modules"),
            )
            .unwrap();
        }
        Lang::C | Lang::CEvents => {
            lang_guest("c", "echo"); // clang-16 and wasi-libc are installed
        }
        Lang::Zig => {
            lang_guest("zig", "echo");
            let zig = root().join("guests/target/lang/zig-toolchain/ziglang/zig");
            command.env("ZIG", zig);
        }
        Lang::Go => {
            lang_guest("go", "echo");
            path.push(root().join("guests/target/lang/go-toolchain/go/bin"));
        }
        Lang::Ts => {
            lang_guest("ts", "echo");
            // What `npm install` would make: the same pinned tsc and
            // componentize-qjs.
            std::os::unix::fs::symlink(
                root().join("guests/ts/node_modules"),
                project.join("node_modules"),
            )
            .unwrap();
        }
        Lang::RustSync | Lang::StarlingMonkey | Lang::GoSync => {
            unreachable!("`sockgate new` has no templates for the WASI 0.2 world")
        }
    }
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    command.env("PATH", std::env::join_paths(path).unwrap());
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    found.sort();
    found
}

async fn a_new_project_builds_as_its_readme_says_and_echoes(lang: Lang) {
    let events = matches!(
        lang,
        Lang::RustEvents | Lang::CEvents | Lang::PythonEvents | Lang::JsEvents
    );
    let scratch = ScratchDir::new(&format!(
        "new-{}{}",
        lang.cli_name(),
        if events { "-events" } else { "" }
    ));
    // No --dir: the project goes to ./NAME.
    let mut args: Vec<&OsStr> = vec![
        "new".as_ref(),
        NAME.as_ref(),
        "--lang".as_ref(),
        lang.cli_name().as_ref(),
    ];
    if events {
        args.push("--events".as_ref());
    }
    let created = sockgate(&scratch.0, &args);
    assert!(
        created.status.success(),
        "sockgate new failed: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let project = scratch.0.join(NAME);

    // The WIT is the gateway's own, byte for byte: the event world's own
    // root (`wit/events/`) for `--events`; otherwise the main world's
    // (`wit/sync/` is the WASI 0.2 world's own root, `wit/http/` the HTTP
    // apps', `--http`; `wit/events-0.2/` the event world's 0.2.0, which no
    // template uses yet).
    let wit = if events {
        root().join("wit/events")
    } else {
        root().join("wit")
    };
    let main_world: Vec<PathBuf> = files_under(&wit)
        .into_iter()
        .filter(|f| {
            events
                || !(f.starts_with("sync")
                    || f.starts_with("http")
                    || f.starts_with("events")
                    || f.starts_with("events-0.2"))
        })
        .collect();
    assert_eq!(files_under(&project.join("wit")), main_world);
    for file in main_world {
        assert!(
            std::fs::read(wit.join(&file)).unwrap()
                == std::fs::read(project.join("wit").join(&file)).unwrap(),
            "wit/{} differs from the gateway's",
            file.display()
        );
    }

    // Build exactly as the README says.
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    let build = readme_commands(&readme, "Build").join("\n");
    let mut command = Command::new("bash");
    command
        .args(["-euo", "pipefail", "-c", &build])
        .current_dir(&project);
    toolchain_env(lang, &project, &mut command);
    let built = command.output().expect("cannot run bash");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    assert!(built.status.success(), "`{build}` failed:\n{log}");
    if matches!(
        lang,
        Lang::Rust | Lang::C | Lang::Zig | Lang::Go | Lang::RustEvents | Lang::CEvents
    ) {
        assert!(
            !log.contains("warning"),
            "the template builds with warnings:\n{log}"
        );
    }

    // Serve it as the README says, and talk to it.
    let run = readme_commands(&readme, "Run");
    let component = run[0]
        .strip_prefix("sockgate run ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("README's Run step is not `sockgate run`: {run:?}"));
    let component = match (lang, component.strip_prefix("target/")) {
        (Lang::Rust | Lang::RustEvents, Some(inside)) => rust_target_dir().join(inside),
        _ => project.join(component),
    };
    assert!(component.is_file(), "{} was not built", component.display());
    let mut serve = Command::new(env!("CARGO_BIN_EXE_sockgate"));
    serve
        .arg("run")
        .arg(&component)
        .args(["--listen", "127.0.0.1:0", "--instances", "1", "--cache-dir"])
        .arg(shared_cache_dir());
    let gateway = Gateway::spawn(serve, ScratchDir::new("new-serve"));
    let data = pattern(42, 256 * 1024);
    let received = tokio::time::timeout(TIMEOUT, round_trip(gateway.addr(NAME), data.clone()))
        .await
        .expect("the new project's guest did not echo in time");
    assert_eq!(received.len(), data.len());
    assert!(
        received == data,
        "the new project's guest echoed other bytes"
    );
}

#[test]
fn new_fills_an_empty_directory_given_with_dir() {
    let scratch = ScratchDir::new("new-empty");
    let project = scratch.0.join("elsewhere");
    std::fs::create_dir(&project).unwrap();
    let created = sockgate(
        &scratch.0,
        &[
            "new".as_ref(),
            "my-app".as_ref(),
            "--lang".as_ref(),
            "python".as_ref(),
            "--dir".as_ref(),
            project.as_os_str(),
        ],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let stdout = String::from_utf8_lossy(&created.stdout);
    assert!(
        stdout.contains("componentize-py") && stdout.contains("sockgate run my-app.wasm"),
        "does not say how to build and run:\n{stdout}"
    );
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    assert!(readme.starts_with("# my-app\n"), "{readme}");
    assert!(project.join("app.py").is_file());
    assert!(project.join("wit/gateway.wit").is_file());
}

#[test]
fn new_refuses_a_directory_that_is_not_empty() {
    let scratch = ScratchDir::new("new-not-empty");
    std::fs::write(scratch.0.join("keep.txt"), "mine").unwrap();
    let (code, stderr) = run_expecting_failure(&[
        "new".as_ref(),
        "my-app".as_ref(),
        "--lang".as_ref(),
        "rust".as_ref(),
        "--dir".as_ref(),
        scratch.0.as_os_str(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("exists and is not empty"), "{stderr}");
    assert_eq!(files_under(&scratch.0), [PathBuf::from("keep.txt")]);
    assert_eq!(
        std::fs::read_to_string(scratch.0.join("keep.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn new_refuses_a_name_that_is_not_a_dns_label() {
    let scratch = ScratchDir::new("new-bad-name");
    let too_long = "x".repeat(64);
    for name in ["Hello", "my_app", "app-", "a.b", too_long.as_str()] {
        let dir = scratch.0.join("project");
        let (code, stderr) = run_expecting_failure(&[
            "new".as_ref(),
            name.as_ref(),
            "--lang".as_ref(),
            "c".as_ref(),
            "--dir".as_ref(),
            dir.as_os_str(),
        ]);
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid app name `{name}`")) && stderr.contains("DNS label"),
            "{name}: {stderr}"
        );
        assert!(!dir.exists(), "{name}: a directory was created");
    }
}

#[test]
fn new_refuses_an_unknown_language_and_lists_the_choices() {
    let scratch = ScratchDir::new("new-bad-lang");
    let dir = scratch.0.join("project");
    let (code, stderr) = run_expecting_failure(&[
        "new".as_ref(),
        "my-app".as_ref(),
        "--lang".as_ref(),
        "cobol".as_ref(),
        "--dir".as_ref(),
        dir.as_os_str(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("'cobol'")
            && stderr.contains("[possible values: rust, python, js, c, zig, go, ts]"),
        "{stderr}"
    );
    assert!(!dir.exists());
}

/// `sockgate new --http`: for each language with an HTTP template (Rust
/// and Python, WASI 0.3; JavaScript on StarlingMonkey, WASI 0.2), the
/// project builds exactly as its README says and the gateway serves it as
/// an HTTP app.
#[tokio::test]
async fn new_http_projects_build_as_their_readme_says_and_answer() {
    for lang in ["rust", "python", "js"] {
        let scratch = ScratchDir::new(&format!("new-http-{lang}"));
        let created = sockgate(
            &scratch.0,
            &[
                "new".as_ref(),
                NAME.as_ref(),
                "--lang".as_ref(),
                lang.as_ref(),
                "--http".as_ref(),
            ],
        );
        assert!(
            created.status.success(),
            "sockgate new --http failed: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        let project = scratch.0.join(NAME);
        let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
        let build = readme_commands(&readme, "Build").join("\n");
        let mut command = Command::new("bash");
        command
            .args(["-euo", "pipefail", "-c", &build])
            .current_dir(&project);
        match lang {
            "rust" => toolchain_env(Lang::Rust, &project, &mut command),
            "python" => toolchain_env(Lang::Python, &project, &mut command),
            _ => {
                // What `npm install` would make: the pinned componentize-js.
                lang_guest("starlingmonkey", "http-hello");
                std::os::unix::fs::symlink(
                    root().join("guests/starlingmonkey/node_modules"),
                    project.join("node_modules"),
                )
                .unwrap();
            }
        }
        let built = command.output().expect("cannot run bash");
        assert!(
            built.status.success(),
            "{lang}: `{build}` failed:\n{}{}",
            String::from_utf8_lossy(&built.stdout),
            String::from_utf8_lossy(&built.stderr)
        );
        let run = readme_commands(&readme, "Run");
        let component = run[0]
            .strip_prefix("sockgate run ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("README's Run step is not `sockgate run`: {run:?}"));
        let component = match (lang, component.strip_prefix("target/")) {
            ("rust", Some(inside)) => rust_target_dir().join(inside),
            _ => project.join(component),
        };
        assert!(component.is_file(), "{} was not built", component.display());
        let mut serve = Command::new(env!("CARGO_BIN_EXE_sockgate"));
        serve
            .arg("run")
            .arg(&component)
            .args(["--listen", "127.0.0.1:0", "--instances", "1", "--cache-dir"])
            .arg(shared_cache_dir());
        let gateway = Gateway::spawn(serve, ScratchDir::new("new-http-serve"));
        let url = format!("http://{}/hello", gateway.addr(NAME));
        let fetched = Command::new("curl")
            .args(["-sS", "--max-time", "30", &url])
            .output()
            .expect("cannot run curl");
        let body = String::from_utf8_lossy(&fetched.stdout);
        assert_eq!(
            body,
            "Hello from hello-app: you asked for /hello\n",
            "{lang}: {}",
            String::from_utf8_lossy(&fetched.stderr)
        );
    }
}
