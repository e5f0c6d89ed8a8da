//! The configuration file as text: parsing it, resolving its relative
//! paths, and pointing every refusal at its place in the file
//! (`FILE:LINE:COLUMN: reason`), so that the operator who edited it — at
//! start, or on `sockgate reload`, which refuses a broken file whole — is
//! told where to look.
//!
//! Syntax errors and unknown or mistyped fields carry the TOML parser's
//! span; a refusal of [`Config::check`] names a [`Place`] (a key, a table,
//! an `[[app]]` table), found again here in the document's spans.

use std::ops::Range;
use std::path::Path;

use anyhow::{Result, anyhow};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Config, Invalid, Place};

/// Parses and checks the configuration file `path`, whose text is `text`;
/// relative paths in it are resolved against the file's directory.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Config> {
    let mut config: Config = toml::from_str(text).map_err(|err| {
        let at = err.span().map(|span| position(text, span.start));
        anyhow!("{}", err.message().trim_end())
            .context(format!("invalid configuration file {}", here(path, at)))
    })?;
    resolve_paths(&mut config, path);
    config.check().map_err(|Invalid { place, error }| {
        error.context(format!(
            "invalid configuration file {}",
            here(path, locate(text, &place))
        ))
    })?;
    for (index, app) in config.apps.iter().enumerate() {
        if !app.component.is_file() {
            return Err(anyhow!(
                "app `{}`: component {} is not a file (a relative path is relative to the \
                 configuration file)",
                app.name,
                app.component.display()
            )
            .context(format!(
                "invalid configuration file {}",
                here(path, locate(text, &Place::App(index)))
            )));
        }
    }
    Ok(config)
}

/// Where the `index`-th `[[app]]` table of the file `path` is, as
/// `FILE:LINE:COLUMN` (just `FILE` when the file no longer parses): for a
/// refusal found after the file was read (a component that does not
/// compile).
pub fn app_location(path: &Path, index: usize) -> String {
    let at = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| locate(&text, &Place::App(index)));
    here(path, at)
}

/// Component paths, the cache and state directories and the TLS files,
/// when relative, are relative to the file's directory.
fn resolve_paths(config: &mut Config, path: &Path) {
    let base = path.parent().unwrap_or(Path::new("."));
    for app in &mut config.apps {
        if app.component.is_relative() {
            app.component = base.join(&app.component);
        }
    }
    for dir in [&mut config.gateway.cache_dir, &mut config.gateway.state_dir]
        .into_iter()
        .flatten()
    {
        if dir.is_relative() {
            *dir = base.join(&*dir);
        }
    }
    if let Some(tls) = &mut config.tls {
        tls.resolve_paths(base);
    }
}

/// `FILE:LINE:COLUMN`, or `FILE` without a position.
fn here(path: &Path, at: Option<(usize, usize)>) -> String {
    match at {
        Some((line, column)) => format!("{}:{line}:{column}", path.display()),
        None => path.display().to_string(),
    }
}

/// Line and column (from 1) of byte `offset` of `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |start| start.chars().count())
        + 1;
    (line, column)
}

/// Where `place` is in `text`: the key that names it (an app: its `name`
/// key, else the table's start).
fn locate(text: &str, place: &Place) -> Option<(usize, usize)> {
    let document = DeTable::parse(text).ok()?;
    let root = document.get_ref();
    let span = match place {
        Place::File => return None,
        Place::Table(table) => entry(root, table)?.0,
        Place::Key(table, key) => {
            let (table_span, value) = entry(root, table)?;
            match value.get_ref() {
                DeValue::Table(inner) => entry(inner, key).map_or(table_span, |(span, _)| span),
                _ => table_span,
            }
        }
        Place::App(index) => {
            let DeValue::Array(apps) = entry(root, "app")?.1.get_ref() else {
                return None;
            };
            let app = apps.get(*index)?;
            match app.get_ref() {
                DeValue::Table(table) => entry(table, "name").map_or(app.span(), |(span, _)| span),
                _ => app.span(),
            }
        }
    };
    Some(position(text, span.start))
}

/// The key `key` of `table`: its span and its value.
fn entry<'t, 'i>(
    table: &'t DeTable<'i>,
    key: &str,
) -> Option<(Range<usize>, &'t Spanned<DeValue<'i>>)> {
    table
        .iter()
        .find(|(name, _)| name.get_ref().as_ref() == key)
        .map(|(name, value)| (name.span(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusal of `text` as a configuration file, with the file's
    /// directory (one per call, removed after) cut from the message.
    fn refusal(text: &str) -> String {
        static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("sockgate-cfg-file-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.wasm"), b"").unwrap();
        let path = dir.join("sockgate.toml");
        let err = parse(&path, text).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        format!("{err:#}").replace(
            &format!("invalid configuration file {}/", dir.display()),
            "",
        )
    }

    const APP: &str = "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\nlisten = \"127.0.0.1:1\"\n";

    #[test]
    fn a_syntax_error_names_its_line() {
        let err = refusal(&format!("{APP}\n[[app]\nname = \"b\"\n"));
        assert!(err.starts_with("sockgate.toml:6:"), "{err}");
    }

    #[test]
    fn an_unknown_field_names_its_line() {
        let err = refusal(&format!("{APP}port = 3\n"));
        assert!(
            err.starts_with("sockgate.toml:5:1: unknown field `port`"),
            "{err}"
        );
    }

    #[test]
    fn an_invalid_limit_names_its_app() {
        let second = "[[app]]\nname = \"b\"\ncomponent = \"a.wasm\"\nlisten = \"127.0.0.1:2\"\n\
                      [app.limits]\ncpu_budget_ms = 0\n";
        let err = refusal(&format!("{APP}\n{second}"));
        assert!(err.starts_with("sockgate.toml:7:1: app `b`: "), "{err}");
    }

    #[test]
    fn a_missing_component_names_its_app() {
        let err = refusal(&APP.replace("a.wasm", "missing.wasm"));
        assert!(
            err.starts_with("sockgate.toml:2:1: app `a`: component"),
            "{err}"
        );
    }

    #[test]
    fn a_gateway_setting_names_its_key() {
        let err = refusal(&format!(
            "[gateway]\ndrain_secs = 1\nmax_connections = 0\n{APP}"
        ));
        assert!(
            err.starts_with("sockgate.toml:3:1: gateway.max_connections"),
            "{err}"
        );
    }
}
