//! `sockgate new`: create a ready-to-build guest project (the build steps
//! the C, Zig, Go and TypeScript projects run through this binary are in
//! `guest_steps`).
//!
//! The project templates (`templates/<lang>/`, `templates/<lang>-http/`,
//! `templates/<lang>-events/`) and the WIT (`wit/`) are embedded in the binary, so a project always gets the contract of the
//! gateway that created it, and the binary needs no files beside it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use sockgate_host::base::names::check_app_name;

/// The languages `sockgate new` has templates for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// Rust with wit-bindgen, built by cargo for wasm32-wasip2.
    Rust,
    /// Python, built by componentize-py.
    Python,
    /// JavaScript, built by componentize-qjs (QuickJS).
    Js,
    /// C, built by clang with wasi-libc and `sockgate c-guest`.
    C,
    /// Zig, over the C bindings (`sockgate c-guest`), built by `zig
    /// build-exe`.
    Zig,
    /// Go, built by `go build` for wasip1 over `sockgate go-guest`'s
    /// bindings.
    Go,
    /// TypeScript, checked by tsc against `sockgate ts-guest`'s
    /// declarations, built by componentize-qjs.
    Ts,
}

/// What kind of app a project is: which world its guest implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A raw-connection guest of `sockgate:gateway/conn-handler`, the
    /// default.
    Conn,
    /// An HTTP app, a standard `wasi:http` component (`--http`).
    Http,
    /// A guest of the event world `sockgate:events/conn-events`
    /// (`--events`).
    Events,
}

/// One file of a project: its path inside the project and its contents.
struct File {
    path: &'static str,
    contents: &'static str,
    executable: bool,
}

/// A file of the repository, embedded at build time, written at `path`.
macro_rules! embed {
    ($source:literal => $path:literal) => {
        embed!($source => $path, false)
    };
    ($source:literal => $path:literal, $executable:literal) => {
        File {
            path: $path,
            contents: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $source)),
            executable: $executable,
        }
    };
}

/// The gateway's WIT for the main world (`wit/` without the WASI 0.2
/// world's own root `wit/sync/`), copied into every project as `wit/`.
const WIT: &[File] = &[
    embed!("wit/gateway.wit" => "wit/gateway.wit"),
    embed!("wit/deps/cli.wit" => "wit/deps/cli.wit"),
    embed!("wit/deps/clocks.wit" => "wit/deps/clocks.wit"),
    embed!("wit/deps/filesystem.wit" => "wit/deps/filesystem.wit"),
    embed!("wit/deps/random.wit" => "wit/deps/random.wit"),
    embed!("wit/deps/sockets.wit" => "wit/deps/sockets.wit"),
];

/// WASI 0.3's HTTP WIT (`wit/http/`: `wasi:http@0.3.0`, world
/// `wasi:http/service`), copied into the Rust and Python HTTP projects as
/// `wit/`.
const WIT_HTTP: &[File] = &[
    embed!("wit/http/http.wit" => "wit/http.wit"),
    embed!("wit/http/deps/cli.wit" => "wit/deps/cli.wit"),
    embed!("wit/http/deps/clocks.wit" => "wit/deps/clocks.wit"),
    embed!("wit/http/deps/filesystem.wit" => "wit/deps/filesystem.wit"),
    embed!("wit/http/deps/random.wit" => "wit/deps/random.wit"),
    embed!("wit/http/deps/sockets.wit" => "wit/deps/sockets.wit"),
];

/// The JavaScript HTTP project's WIT: its world, and WASI 0.2 at the
/// version StarlingMonkey implements (the same files as
/// guests/starlingmonkey/http-hello).
const WIT_JS_HTTP: &[File] = &[
    embed!("templates/js-http/wit/world.wit" => "wit/world.wit"),
    embed!("guests/starlingmonkey/http-hello/wit/deps/wasi-cli/package.wit" => "wit/deps/wasi-cli/package.wit"),
    embed!("guests/starlingmonkey/http-hello/wit/deps/wasi-clocks/package.wit" => "wit/deps/wasi-clocks/package.wit"),
    embed!("guests/starlingmonkey/http-hello/wit/deps/wasi-filesystem/package.wit" => "wit/deps/wasi-filesystem/package.wit"),
    embed!("guests/starlingmonkey/http-hello/wit/deps/wasi-http/package.wit" => "wit/deps/wasi-http/package.wit"),
    embed!("guests/starlingmonkey/http-hello/wit/deps/wasi-io/package.wit" => "wit/deps/wasi-io/package.wit"),
    embed!("guests/starlingmonkey/http-hello/wit/deps/wasi-random/package.wit" => "wit/deps/wasi-random/package.wit"),
    embed!("guests/starlingmonkey/http-hello/wit/deps/wasi-sockets/package.wit" => "wit/deps/wasi-sockets/package.wit"),
];

/// The event world's WIT (`wit/events/`: package `sockgate:events`, world
/// `conn-events`, no dependencies), copied into the event projects as
/// `wit/`.
const WIT_EVENTS: &[File] = &[embed!("wit/events/conn-events.wit" => "wit/conn-events.wit")];

const RUST_EVENTS: &[File] = &[
    embed!("templates/rust-events/Cargo.toml.in" => "Cargo.toml"),
    embed!("templates/rust-events/Cargo.lock.in" => "Cargo.lock"),
    embed!("templates/rust-events/.cargo/config.toml" => ".cargo/config.toml"),
    embed!("templates/rust-events/.gitignore" => ".gitignore"),
    embed!("templates/rust-events/README.md" => "README.md"),
    embed!("templates/rust-events/src/lib.rs" => "src/lib.rs"),
];

const C_EVENTS: &[File] = &[
    embed!("templates/c-events/.gitignore" => ".gitignore"),
    embed!("templates/c-events/README.md" => "README.md"),
    embed!("templates/c-events/app.c" => "app.c"),
    embed!("templates/c-events/build.sh" => "build.sh", true),
];

const PYTHON_EVENTS: &[File] = &[
    embed!("templates/python-events/.gitignore" => ".gitignore"),
    embed!("templates/python-events/README.md" => "README.md"),
    embed!("templates/python-events/app.py" => "app.py"),
];

const JS_EVENTS: &[File] = &[
    embed!("templates/js-events/.gitignore" => ".gitignore"),
    embed!("templates/js-events/README.md" => "README.md"),
    embed!("templates/js-events/app.js" => "app.js"),
    embed!("templates/js-events/package.json" => "package.json"),
];

const RUST_HTTP: &[File] = &[
    embed!("templates/rust-http/Cargo.toml.in" => "Cargo.toml"),
    embed!("templates/rust-http/Cargo.lock.in" => "Cargo.lock"),
    embed!("templates/rust-http/.cargo/config.toml" => ".cargo/config.toml"),
    embed!("templates/rust-http/.gitignore" => ".gitignore"),
    embed!("templates/rust-http/README.md" => "README.md"),
    embed!("templates/rust-http/src/lib.rs" => "src/lib.rs"),
];

const PYTHON_HTTP: &[File] = &[
    embed!("templates/python-http/.gitignore" => ".gitignore"),
    embed!("templates/python-http/README.md" => "README.md"),
    embed!("templates/python-http/app.py" => "app.py"),
];

const JS_HTTP: &[File] = &[
    embed!("templates/js-http/.gitignore" => ".gitignore"),
    embed!("templates/js-http/README.md" => "README.md"),
    embed!("templates/js-http/app.js" => "app.js"),
    embed!("templates/js-http/package.json" => "package.json"),
];

const RUST: &[File] = &[
    embed!("templates/rust/Cargo.toml.in" => "Cargo.toml"),
    embed!("templates/rust/Cargo.lock.in" => "Cargo.lock"),
    embed!("templates/rust/.cargo/config.toml" => ".cargo/config.toml"),
    embed!("templates/rust/.gitignore" => ".gitignore"),
    embed!("templates/rust/README.md" => "README.md"),
    embed!("templates/rust/src/lib.rs" => "src/lib.rs"),
];

const PYTHON: &[File] = &[
    embed!("templates/python/.gitignore" => ".gitignore"),
    embed!("templates/python/README.md" => "README.md"),
    embed!("templates/python/app.py" => "app.py"),
];

const JS: &[File] = &[
    embed!("templates/js/.gitignore" => ".gitignore"),
    embed!("templates/js/README.md" => "README.md"),
    embed!("templates/js/app.js" => "app.js"),
    embed!("templates/js/package.json" => "package.json"),
];

const C: &[File] = &[
    embed!("templates/c/.gitignore" => ".gitignore"),
    embed!("templates/c/README.md" => "README.md"),
    embed!("templates/c/app.c" => "app.c"),
    embed!("templates/c/build.sh" => "build.sh", true),
];

const ZIG: &[File] = &[
    embed!("templates/zig/.gitignore" => ".gitignore"),
    embed!("templates/zig/README.md" => "README.md"),
    embed!("templates/zig/app.zig" => "app.zig"),
    embed!("templates/zig/build.sh" => "build.sh", true),
];

const GO: &[File] = &[
    embed!("templates/go/.gitignore" => ".gitignore"),
    embed!("templates/go/README.md" => "README.md"),
    embed!("templates/go/app.go" => "app.go"),
    embed!("templates/go/build.sh" => "build.sh", true),
];

const TS: &[File] = &[
    embed!("templates/ts/.gitignore" => ".gitignore"),
    embed!("templates/ts/README.md" => "README.md"),
    embed!("templates/ts/app.ts" => "app.ts"),
    embed!("templates/ts/package.json" => "package.json"),
    embed!("templates/ts/tsconfig.json" => "tsconfig.json"),
];

impl Lang {
    /// The files of an HTTP app's project (`--http`): its WIT and its
    /// template, or `None` for a language without one.
    fn http_files(self) -> Option<(&'static [File], &'static [File])> {
        match self {
            Lang::Rust => Some((WIT_HTTP, RUST_HTTP)),
            Lang::Python => Some((WIT_HTTP, PYTHON_HTTP)),
            Lang::Js => Some((WIT_JS_HTTP, JS_HTTP)),
            Lang::C | Lang::Zig | Lang::Go | Lang::Ts => None,
        }
    }

    /// The template of an event-world guest's project (`--events`), or
    /// `None` for a language without one. (Its WIT is `WIT_EVENTS`.)
    fn events_files(self) -> Option<&'static [File]> {
        match self {
            Lang::Rust => Some(RUST_EVENTS),
            Lang::C => Some(C_EVENTS),
            Lang::Python => Some(PYTHON_EVENTS),
            Lang::Js => Some(JS_EVENTS),
            Lang::Zig | Lang::Go | Lang::Ts => None,
        }
    }

    /// The WIT and template files of a project of `kind`.
    fn project(self, kind: Kind) -> Result<(&'static [File], &'static [File])> {
        match kind {
            Kind::Conn => Ok((WIT, self.files())),
            Kind::Http => self.http_files().ok_or_else(|| {
                anyhow::anyhow!(
                    "there is no HTTP app template for {} yet: `--http` works with --lang rust, \
                     python or js (JavaScript on StarlingMonkey); a {} guest can serve HTTP as \
                     a raw-connection app (without --http)",
                    self.display(),
                    self.display()
                )
            }),
            Kind::Events => self
                .events_files()
                .map(|files| (WIT_EVENTS, files))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "there is no event-world template for {} yet: `--events` works with \
                     --lang rust, c, python or js; a {} guest can be a raw-connection guest \
                     (without --events)",
                        self.display(),
                        self.display()
                    )
                }),
        }
    }

    fn files(self) -> &'static [File] {
        match self {
            Lang::Rust => RUST,
            Lang::Python => PYTHON,
            Lang::Js => JS,
            Lang::C => C,
            Lang::Zig => ZIG,
            Lang::Go => GO,
            Lang::Ts => TS,
        }
    }

    fn display(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
            Lang::C => "C",
            Lang::Zig => "Zig",
            Lang::Go => "Go",
            Lang::Ts => "TypeScript",
        }
    }
}

/// Creates the project for app `name` in `lang` in `dir` (default
/// `./<name>`), a guest of the world `kind` says, and prints what to do
/// next.
///
/// Refuses an invalid app name (it becomes a subdomain) and an existing
/// directory that is not empty, so it never overwrites anyone's work.
pub fn create(name: &str, lang: Lang, dir: Option<PathBuf>, kind: Kind) -> Result<()> {
    check_app_name(name).context("the project name becomes the app's name")?;
    let (wit, files) = lang.project(kind)?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let existed = match std::fs::read_dir(&dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} exists and is not empty: choose another --dir, or remove it first",
                    dir.display()
                );
            }
            true
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
        Err(err) => {
            return Err(err).with_context(|| {
                format!(
                    "cannot create the project in {}: it is not a usable directory",
                    dir.display()
                )
            });
        }
    };
    let written = write_project(name, wit, files, &dir);
    if written.is_err() && !existed {
        // Leave nothing half-made behind.
        let _ = std::fs::remove_dir_all(&dir);
    }
    written?;
    let readme = render(
        files
            .iter()
            .find(|f| f.path == "README.md")
            .map_or("", |f| f.contents),
        name,
    );
    println!(
        "created {} {} `{name}` in {}",
        lang.display(),
        match kind {
            Kind::Conn => "guest",
            Kind::Http => "HTTP app",
            Kind::Events => "event-world guest",
        },
        dir.display()
    );
    println!("next, in {} (see its README.md):", dir.display());
    for section in ["Build", "Run"] {
        for line in section_commands(&readme, section) {
            println!("  {line}");
        }
    }
    Ok(())
}

/// Writes every file of the project into `dir`.
fn write_project(name: &str, wit: &[File], files: &[File], dir: &Path) -> Result<()> {
    for file in wit.iter().chain(files) {
        let path = dir.join(file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        // WIT is copied as it is: it must stay identical to the gateway's.
        let contents = if file.path.starts_with("wit/") {
            file.contents.to_owned()
        } else {
            render(file.contents, name)
        };
        write_new(&path, &contents, file.executable)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Creates `path` (never overwriting) with `contents`.
fn write_new(path: &Path, contents: &str, executable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

/// Fills in a template: `{{name}}` is the app name, `{{name_snake}}` the
/// same with `_` for `-` (what cargo names a crate's `.wasm`).
fn render(template: &str, name: &str) -> String {
    template
        .replace("{{name_snake}}", &name.replace('-', "_"))
        .replace("{{name}}", name)
}

/// The lines of the first ```` ```sh ```` block under the markdown heading
/// `## <section>`: the commands a project's README gives for that step.
pub fn section_commands(readme: &str, section: &str) -> Vec<String> {
    let heading = format!("## {section}");
    let mut lines = readme.lines().skip_while(|l| l.trim() != heading).skip(1);
    let mut commands = Vec::new();
    if lines.by_ref().any(|l| l.trim() == "```sh") {
        commands.extend(lines.take_while(|l| l.trim() != "```").map(str::to_owned));
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `dir`, relative to it, sorted.
    fn files_under(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(next) = stack.pop() {
            for entry in std::fs::read_dir(&next).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path.strip_prefix(dir).unwrap();
                    found.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        found
    }

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn every_wit_file_is_embedded() {
        let mut embedded: Vec<String> = WIT
            .iter()
            .map(|f| f.path.trim_start_matches("wit/").to_owned())
            .collect();
        embedded.sort();
        // `wit/sync/` is the WASI 0.2 world's own root, `wit/http/` WASI
        // 0.3's HTTP interfaces (the HTTP templates'), `wit/events/` the
        // event world's (the event templates'), `wit/events-0.2/` its
        // 0.2.0 (no template yet); the others are for the main world.
        let main_world: Vec<String> = files_under(&root().join("wit"))
            .into_iter()
            .filter(|f| {
                !f.starts_with("sync/")
                    && !f.starts_with("http/")
                    && !f.starts_with("events/")
                    && !f.starts_with("events-0.2/")
            })
            .collect();
        assert_eq!(embedded, main_world);
        let mut events: Vec<String> = WIT_EVENTS
            .iter()
            .map(|f| f.path.trim_start_matches("wit/").to_owned())
            .collect();
        events.sort();
        assert_eq!(events, files_under(&root().join("wit/events")));
        let mut http: Vec<String> = WIT_HTTP
            .iter()
            .map(|f| f.path.trim_start_matches("wit/").to_owned())
            .collect();
        http.sort();
        assert_eq!(http, files_under(&root().join("wit/http")));
        let mut js: Vec<String> = WIT_JS_HTTP
            .iter()
            .skip(1)
            .map(|f| f.path.trim_start_matches("wit/").to_owned())
            .collect();
        js.sort();
        let js_on_disk = files_under(&root().join("guests/starlingmonkey/http-hello/wit"))
            .into_iter()
            .filter(|f| f.starts_with("deps/"))
            .collect::<Vec<_>>();
        assert_eq!(js, js_on_disk);
    }

    #[test]
    fn every_template_file_is_embedded() {
        for (dir, lang) in [
            ("rust", Lang::Rust),
            ("python", Lang::Python),
            ("js", Lang::Js),
            ("c", Lang::C),
            ("zig", Lang::Zig),
            ("go", Lang::Go),
            ("ts", Lang::Ts),
        ]
        .map(|(dir, lang)| (dir, lang.files()))
        .into_iter()
        .chain([
            ("rust-http", RUST_HTTP),
            ("python-http", PYTHON_HTTP),
            ("js-http", JS_HTTP),
            ("rust-events", RUST_EVENTS),
            ("c-events", C_EVENTS),
            ("python-events", PYTHON_EVENTS),
            ("js-events", JS_EVENTS),
        ]) {
            let mut on_disk = files_under(&root().join("templates").join(dir));
            // The JavaScript HTTP project's world is embedded with its WIT.
            on_disk.retain(|f| f != "wit/world.wit");
            let mut embedded: Vec<String> = lang
                .iter()
                .map(|f| match f.path {
                    "Cargo.toml" => "Cargo.toml.in".to_owned(),
                    "Cargo.lock" => "Cargo.lock.in".to_owned(),
                    other => other.to_owned(),
                })
                .collect();
            embedded.sort();
            assert_eq!(embedded, on_disk, "templates/{dir}");
        }
    }

    #[test]
    fn every_readme_says_how_to_build_and_run() {
        let http = Lang::value_variants()
            .iter()
            .filter_map(|lang| Some((*lang, lang.http_files()?.1)));
        let events = Lang::value_variants()
            .iter()
            .filter_map(|lang| Some((*lang, lang.events_files()?)));
        for (lang, files) in Lang::value_variants()
            .iter()
            .map(|lang| (*lang, lang.files()))
            .chain(http)
            .chain(events)
        {
            let readme = render(
                files
                    .iter()
                    .find(|f| f.path == "README.md")
                    .unwrap()
                    .contents,
                "my-app",
            );
            assert!(!section_commands(&readme, "Build").is_empty(), "{lang:?}");
            let run = section_commands(&readme, "Run");
            assert!(run[0].starts_with("sockgate run "), "{lang:?}: {run:?}");
            assert!(!readme.contains("{{"), "{lang:?}: unfilled placeholder");
        }
    }

    #[test]
    fn a_language_without_an_event_template_is_refused() {
        assert!(Lang::Rust.project(Kind::Events).is_ok());
        assert!(Lang::C.project(Kind::Events).is_ok());
        assert!(Lang::Python.project(Kind::Events).is_ok());
        assert!(Lang::Js.project(Kind::Events).is_ok());
        let err = Lang::Go.project(Kind::Events).err().unwrap().to_string();
        assert!(err.contains("--lang rust, c, python or js"), "{err}");
    }

    #[test]
    fn section_commands_takes_the_block_under_its_heading() {
        let readme =
            "# x\n\n## Set up\n\n```sh\nsetup\n```\n\n## Build\n\ntext\n\n```sh\none\ntwo\n```\n";
        assert_eq!(section_commands(readme, "Build"), ["one", "two"]);
        assert_eq!(section_commands(readme, "Set up"), ["setup"]);
        assert!(section_commands(readme, "Run").is_empty());
    }
}
