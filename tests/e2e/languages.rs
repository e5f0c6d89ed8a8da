//! The languages the example guests are written in, so that one behavioural
//! test runs against every language's version of a guest.
//!
//! A test suite is a set of `async fn(Lang)`; [`language_tests!`] turns it
//! into one `#[tokio::test]` per language and test, named
//! `<module>::<language>::<test>` (for example `echo::python::…`).

/// A language with example guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// Crates in `guests/`, built with cargo for `wasm32-wasip2`.
    Rust,
    /// `guests/python/<name>`, built with componentize-py.
    Python,
    /// `guests/js/<name>`, built with componentize-qjs.
    Js,
    /// `guests/c/<name>`, built with clang, wasi-libc and `wit-bindgen c`.
    C,
    /// Crates `guests/sync-<name>`: Rust for the WASI 0.2 world
    /// `conn-handler-sync` (one instance per connection).
    RustSync,
    /// `guests/starlingmonkey/<name>`: JavaScript on StarlingMonkey, built
    /// with componentize-js, for the world `conn-handler-sync`.
    StarlingMonkey,
    /// `guests/zig/<name>`, built with zig over the C bindings.
    Zig,
    /// `guests/go/<name>`, built with Go (wasip1) and wit-bindgen-go's
    /// bindings, for the async world with sockgate's runtime hooks.
    Go,
    /// `guests/go/sync-<name>`: Go for the WASI 0.2 world
    /// `conn-handler-sync`.
    GoSync,
    /// `guests/ts/<name>`, checked by tsc, built with componentize-qjs.
    Ts,
    /// Crates `guests/events-<name>`: Rust for the event world
    /// `conn-events` (one call per batch of socket events).
    RustEvents,
    /// Crates `guests/events-<name>-v2`: Rust for version 0.2.0 of the
    /// event world (`wit/events-0.2/`: a batch's bytes in one buffer).
    RustEventsV2,
    /// `guests/c/events-<name>`: C for the event world.
    CEvents,
    /// `guests/python/events-<name>`: Python (componentize-py) for the
    /// event world.
    PythonEvents,
    /// `guests/js/events-<name>`: JavaScript (componentize-qjs) for the
    /// event world.
    JsEvents,
}

impl Lang {
    /// The [`TestApp::guest`](crate::support::TestApp::guest) that names
    /// example `name` in this language.
    pub fn guest(self, name: &str) -> String {
        match self {
            Lang::Rust => name.to_owned(),
            Lang::Python => format!("python/{name}"),
            Lang::Js => format!("js/{name}"),
            Lang::C => format!("c/{name}"),
            Lang::RustSync => format!("sync-{name}"),
            Lang::StarlingMonkey => format!("starlingmonkey/{name}"),
            Lang::Zig => format!("zig/{name}"),
            Lang::Go => format!("go/{name}"),
            Lang::GoSync => format!("go/sync-{name}"),
            Lang::Ts => format!("ts/{name}"),
            Lang::RustEvents => format!("events-{name}"),
            Lang::RustEventsV2 => format!("events-{name}-v2"),
            Lang::CEvents => format!("c/events-{name}"),
            Lang::PythonEvents => format!("python/events-{name}"),
            Lang::JsEvents => format!("js/events-{name}"),
        }
    }

    /// The language's name on the command line (`sockgate new --lang`).
    pub fn cli_name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::C => "c",
            Lang::Zig => "zig",
            Lang::Go => "go",
            Lang::Ts => "ts",
            // With `--events`.
            Lang::RustEvents => "rust",
            Lang::CEvents => "c",
            Lang::PythonEvents => "python",
            Lang::JsEvents => "js",
            Lang::RustSync | Lang::StarlingMonkey | Lang::GoSync => {
                unreachable!("`sockgate new` has no templates for the WASI 0.2 world")
            }
            Lang::RustEventsV2 => {
                unreachable!("`sockgate new` has no template for the event world's 0.2.0 yet")
            }
        }
    }
}

/// One test per language and suite function:
///
/// ```ignore
/// language_tests! {
///     languages: [rust: Rust, python: Python],
///     tests: [echoes_bytes, survives_half_close],
/// }
/// ```
///
/// generates `mod rust { #[tokio::test] async fn echoes_bytes() { … } … }`
/// and `mod python { … }`, each calling `super::echoes_bytes(Lang::Rust)` and
/// so on: the same test code for every language.
macro_rules! language_tests {
    (languages: [$($module:ident: $lang:ident),* $(,)?], tests: $tests:tt $(,)?) => {
        $( $crate::languages::language_tests!(@one $module $lang $tests); )*
    };
    (@one $module:ident $lang:ident [$($test:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::languages::Lang::$lang).await
                }
            )*
        }
    };
}

pub(crate) use language_tests;
