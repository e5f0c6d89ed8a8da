//! TypeScript declarations for a world, as componentize-qjs (the JavaScript
//! toolchain of sockgate's async world) presents it to JavaScript, so that a
//! TypeScript guest is type-checked against what it really receives.
//!
//! `jco guest-types` writes declarations for jco's own conventions, which
//! componentize-qjs does not follow (`u64` is a `bigint` there and a
//! `number` here; `option` is `undefined` there and `null` here; streams are
//! plain async iterables of numbers there and chunked readers with `drop()`
//! here; a function returning `result` throws its error here). These
//! follow componentize-qjs 0.4's README ("WIT Type Mappings", "Streams",
//! "Futures"):
//!
//! | WIT | TypeScript |
//! |---|---|
//! | integers, floats (`u64`/`s64` too: exact below 2^53) | `number` |
//! | `char`, `string` | `string` |
//! | `list<u8>` | `Uint8Array` (`number[]` accepted where the guest gives it) |
//! | `list<T>`, `tuple<…>`, `map<K, V>` | `T[]`, `[…]`, `Map<K, V>` |
//! | `option<T>` | `T \| null` (an option of an option: `{ tag: "some", val } \| { tag: "none" }`) |
//! | `result<T, E>` as a function's result | `T`; the error is thrown |
//! | `result<T, E>` elsewhere, `variant` | `{ tag: "ok", val: T } \| { tag: "err", val: E }` |
//! | `record`, `flags` | objects with camelCase keys |
//! | `enum` | the case names as string literals |
//! | resources | classes (methods camelCase, `static`, `constructor`) |
//! | `stream<T>` received | `WitStreamReadable` (for `u8`: `Uint8Array` chunks) |
//! | `stream<T>` given | a `WitStreamReadable` or any (async) iterable of items (for `u8`: of `Uint8Array` chunks) |
//! | `future<T>` | `WitFutureReadable<T>` |
//!
//! Imported interfaces are ambient modules named as JavaScript imports them
//! (`import connection from "sockgate:gateway/connection@0.1.0"`, or named
//! imports). An exported interface's module declares an interface type
//! named after it (`Handler`) that the guest's exported object implements:
//! `export const handler: Handler = { … }`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use wit_parser::{
    Docs, Function, FunctionKind, Handle, InterfaceId, Resolve, Type, TypeDefKind, TypeId,
    TypeOwner, WorldId, WorldItem,
};

use crate::{load_world, write_if_changed};

/// Global helper types every declaration file starts with.
const PRELUDE: &str = r#"// Global helpers: componentize-qjs's stream and future endpoints, and its
// `wit` object.

/** The readable end of a WIT `stream`, as componentize-qjs lifts it: an
 * async iterable of `Chunk`s (for `stream<u8>`, `Uint8Array` chunks; else
 * one item at a time). Drop it when done. */
interface WitStreamReadable<Chunk, Batch> extends AsyncIterable<Chunk> {
  /** Reads up to `count` items (a `Uint8Array` for `stream<u8>`). */
  read(count?: number): Promise<Batch>;
  next(): Promise<IteratorResult<Chunk>>;
  /** Ends iteration and releases the handle. */
  return(): Promise<IteratorResult<Chunk>>;
  cancelRead(): unknown;
  /** Releases the handle: the writer sees the reader gone. */
  drop(): void;
  [Symbol.asyncIterator](): WitStreamReadable<Chunk, Batch>;
}

/** The writable end of a WIT `stream`. Dropping it ends the stream. */
interface WitStreamWritable<Chunk, Batch> {
  /** Writes what the reader takes now; resolves to the count written. */
  write(data: Batch): Promise<number>;
  writeOne(value: Chunk): Promise<number>;
  /** Writes everything, waiting for the reader as needed. */
  writeAll(data: Batch): Promise<number>;
  cancelWrite(): unknown;
  drop(): void;
}

/** What a WIT `stream` parameter or result accepts from the guest: a
 * readable end, or an (async) iterable that componentize-qjs writes item
 * by item as the reader takes them, ending the stream when it ends. */
type WitStreamSource<Chunk, Batch> =
  | WitStreamReadable<Chunk, Batch>
  | AsyncIterable<Chunk>
  | Iterable<Chunk>;

/** The readable end of a WIT `future<T>` (deliberately not thenable). */
interface WitFutureReadable<T> {
  read(): Promise<T>;
  cancelRead(): unknown;
  drop(): void;
}

/** The writable end of a WIT `future<T>`. */
interface WitFutureWritable<T> {
  write(value: T): Promise<boolean>;
  cancelWrite(): unknown;
  drop(): void;
}

/** A stream or future element type, as `wit.Stream.U8` names it. */
type WitElementType = { readonly __witElementType: unique symbol };

/** componentize-qjs's global `wit` object: stream and future factories. */
declare const wit: {
  Stream: {
    <Chunk = Uint8Array, Batch = Uint8Array>(type?: WitElementType): {
      readable: WitStreamReadable<Chunk, Batch>;
      writable: WitStreamWritable<Chunk, Batch>;
    };
    readonly [name: string]: WitElementType;
  };
  Future: {
    <T>(type?: WitElementType): {
      readable: WitFutureReadable<T>;
      writable: WitFutureWritable<T>;
    };
    readonly [name: string]: WitElementType;
  };
};
"#;

/// Whether a value crosses into the guest (lifted: what it receives) or
/// out of it (lowered: what it gives); streams and byte lists differ.
#[derive(Clone, Copy, PartialEq)]
enum Flow {
    In,
    Out,
}

/// Writes `<world>.d.ts` for `world` (default: the package's only world)
/// of the WIT in `wit` into `out`, and returns its path.
pub fn types(wit: &Path, world: Option<&str>, out: &Path) -> Result<PathBuf> {
    let (resolve, world) = load_world(wit, world)?;
    let text = declarations(&resolve, world);
    let path = out.join(format!("{}.d.ts", resolve.worlds[world].name));
    write_if_changed(&path, text.as_bytes())?;
    Ok(path)
}

/// The declaration file's text.
fn declarations(resolve: &Resolve, world: WorldId) -> String {
    let w = &resolve.worlds[world];
    let mut out = format!(
        "// TypeScript declarations for the WIT world `{}`, as componentize-qjs\n\
         // presents it to JavaScript. Generated by `sockgate ts-guest types`:\n\
         // do not edit, generate again when the WIT changes.\n\n{PRELUDE}",
        world_id(resolve, world)
    );
    let generator = Gen {
        resolve,
        current: std::cell::Cell::new(None),
    };
    for (key, item) in &w.imports {
        match item {
            WorldItem::Interface { id, .. } => generator.interface(&mut out, *id, false),
            WorldItem::Type { id, .. } => {
                let _ = writeln!(
                    out,
                    "\ndeclare module {:?} {{\n{}}}",
                    world_id(resolve, world),
                    generator.typedef(*id)
                );
            }
            WorldItem::Function(_) => {
                let _ = writeln!(
                    out,
                    "\n// World-level import `{}` is not declared: componentize-qjs guests \
                     import interfaces.",
                    resolve.name_world_key(key)
                );
            }
        }
    }
    let mut world_exports = String::new();
    for item in w.exports.values() {
        match item {
            WorldItem::Interface { id, .. } => generator.interface(&mut out, *id, true),
            WorldItem::Function(f) => {
                world_exports.push_str(&generator.function_member(f, true));
            }
            WorldItem::Type { .. } => {}
        }
    }
    if !world_exports.is_empty() {
        let _ = writeln!(
            out,
            "\ndeclare module {:?} {{\n  /** The functions the guest module exports. */\n  \
             export interface Exports {{\n{world_exports}  }}\n}}",
            world_id(resolve, world)
        );
    }
    out
}

/// `ns:pkg/world@version`.
fn world_id(resolve: &Resolve, world: WorldId) -> String {
    let w = &resolve.worlds[world];
    match w.package {
        Some(package) => resolve.id_of_name(package, &w.name),
        None => w.name.clone(),
    }
}

/// `kebab-case` to `camelCase`.
fn lower_camel(name: &str) -> String {
    let mut out = String::new();
    for (i, word) in name.split('-').enumerate() {
        if i == 0 {
            out.push_str(word);
        } else {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
            }
        }
    }
    // Names JavaScript reserves get a trailing underscore.
    if matches!(
        out.as_str(),
        "delete" | "new" | "default" | "function" | "class" | "import" | "export" | "in" | "var"
    ) {
        out.push('_');
    }
    out
}

/// `kebab-case` to `UpperCamelCase`.
fn upper_camel(name: &str) -> String {
    let camel = lower_camel(name.trim_end_matches('_'));
    let mut chars = camel.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => camel,
    }
}

/// WIT docs as a JSDoc comment indented by `indent`.
fn jsdoc(docs: &Docs, indent: &str) -> String {
    let Some(text) = docs.contents.as_deref() else {
        return String::new();
    };
    let mut out = format!("{indent}/**\n");
    for line in text.trim_end().lines() {
        let line = line.replace("*/", "*\\/");
        if line.is_empty() {
            let _ = writeln!(out, "{indent} *");
        } else {
            let _ = writeln!(out, "{indent} * {line}");
        }
    }
    let _ = writeln!(out, "{indent} */");
    out
}

struct Gen<'a> {
    resolve: &'a Resolve,
    /// The interface whose module is being written: its own types need no
    /// qualification.
    current: std::cell::Cell<Option<InterfaceId>>,
}

impl Gen<'_> {
    /// One interface's ambient module.
    fn interface(&self, out: &mut String, id: InterfaceId, exported: bool) {
        let iface = &self.resolve.interfaces[id];
        let Some(module) = self.resolve.id_of(id) else {
            return; // an unnamed interface: nothing can import it by name
        };
        self.current.set(Some(id));
        let _ = writeln!(out, "\ndeclare module {module:?} {{");
        for ty in iface.types.values() {
            out.push_str(&self.typedef(*ty));
        }
        if exported {
            let name = upper_camel(iface.name.as_deref().unwrap_or("exports"));
            let _ = write!(
                out,
                "  /** What the guest exports as `{}`: an object with these methods. */\n  \
                 export interface {name} {{\n",
                lower_camel(iface.name.as_deref().unwrap_or("exports"))
            );
            for f in iface.functions.values() {
                if matches!(
                    f.kind,
                    FunctionKind::Freestanding | FunctionKind::AsyncFreestanding
                ) {
                    out.push_str(&self.function_member(f, true));
                }
            }
            out.push_str("  }\n");
        } else {
            let mut members = Vec::new();
            for f in iface.functions.values() {
                if matches!(
                    f.kind,
                    FunctionKind::Freestanding | FunctionKind::AsyncFreestanding
                ) {
                    out.push_str(&jsdoc(&f.docs, "  "));
                    let _ = writeln!(
                        out,
                        "  export function {}({}): {};",
                        lower_camel(&f.name),
                        self.params(f, Flow::Out),
                        self.result(f, Flow::In)
                    );
                    members.push(format!("{0}: typeof {0}", lower_camel(&f.name)));
                }
            }
            for ty in iface.types.iter() {
                if matches!(self.resolve.types[*ty.1].kind, TypeDefKind::Resource) {
                    let name = upper_camel(ty.0);
                    members.push(format!("{name}: typeof {name}"));
                }
            }
            let _ = writeln!(
                out,
                "  /** The default import: the interface as one object. */\n  \
                 const iface: {{ {} }};\n  export default iface;",
                members.join("; ")
            );
        }
        out.push_str("}\n");
        self.current.set(None);
    }

    /// A function as a method of an exported interface's object type.
    fn function_member(&self, f: &Function, exported: bool) -> String {
        let (params, result) = if exported {
            (self.params(f, Flow::In), self.result(f, Flow::Out))
        } else {
            (self.params(f, Flow::Out), self.result(f, Flow::In))
        };
        format!(
            "{}    {}({params}): {result};\n",
            jsdoc(&f.docs, "    "),
            lower_camel(f.item_name())
        )
    }

    /// A function's parameters (without a method's `self`).
    fn params(&self, f: &Function, flow: Flow) -> String {
        let skip = usize::from(matches!(
            f.kind,
            FunctionKind::Method(_)
                | FunctionKind::AsyncMethod(_)
                | FunctionKind::MethodGetter(_)
                | FunctionKind::MethodSetter(_)
        ));
        f.params
            .iter()
            .skip(skip)
            .map(|p| format!("{}: {}", lower_camel(&p.name), self.ty(&p.ty, flow)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A function's result: a top-level `result`'s ok type (its error is
    /// thrown), wrapped in a Promise for async functions.
    fn result(&self, f: &Function, flow: Flow) -> String {
        let plain = match &f.result {
            None => "void".to_owned(),
            Some(Type::Id(id)) => match &self.resolve.types[*id].kind {
                TypeDefKind::Result(r) => {
                    r.ok.as_ref()
                        .map_or_else(|| "void".to_owned(), |ok| self.ty(ok, flow))
                }
                _ => self.ty(&Type::Id(*id), flow),
            },
            Some(ty) => self.ty(ty, flow),
        };
        if f.kind.is_async() {
            format!("Promise<{plain}>")
        } else {
            plain
        }
    }

    /// A named type's declaration (inside its interface's module).
    fn typedef(&self, id: TypeId) -> String {
        let def = &self.resolve.types[id];
        let Some(wit_name) = def.name.as_deref() else {
            return String::new();
        };
        let name = upper_camel(wit_name);
        let docs = jsdoc(&def.docs, "  ");
        let body = match &def.kind {
            TypeDefKind::Record(record) => {
                let mut fields = String::new();
                for field in &record.fields {
                    fields.push_str(&jsdoc(&field.docs, "    "));
                    let _ = writeln!(
                        fields,
                        "    {}: {};",
                        lower_camel(&field.name),
                        self.ty(&field.ty, Flow::In)
                    );
                }
                return format!("{docs}  export interface {name} {{\n{fields}  }}\n");
            }
            TypeDefKind::Flags(flags) => {
                let mut fields = String::new();
                for flag in &flags.flags {
                    let _ = writeln!(fields, "    {}?: boolean;", lower_camel(&flag.name));
                }
                return format!("{docs}  export interface {name} {{\n{fields}  }}\n");
            }
            TypeDefKind::Resource => return self.resource(id, &name, &docs),
            TypeDefKind::Variant(variant) => variant
                .cases
                .iter()
                .map(|case| match &case.ty {
                    Some(ty) => {
                        format!("{{ tag: {:?}; val: {} }}", case.name, self.ty(ty, Flow::In))
                    }
                    None => format!("{{ tag: {:?} }}", case.name),
                })
                .collect::<Vec<_>>()
                .join(" | "),
            TypeDefKind::Enum(e) => e
                .cases
                .iter()
                .map(|case| format!("{:?}", case.name))
                .collect::<Vec<_>>()
                .join(" | "),
            _ => self.anonymous(&def.kind, Flow::In),
        };
        format!("{docs}  export type {name} = {body};\n")
    }

    /// An imported resource's class.
    fn resource(&self, id: TypeId, name: &str, docs: &str) -> String {
        let TypeOwner::Interface(owner) = self.resolve.types[id].owner else {
            return format!("{docs}  export class {name} {{}}\n");
        };
        let mut members = String::new();
        let mut has_constructor = false;
        for f in self.resolve.interfaces[owner].functions.values() {
            let of_this = match f.kind {
                FunctionKind::Method(t)
                | FunctionKind::AsyncMethod(t)
                | FunctionKind::MethodGetter(t)
                | FunctionKind::MethodSetter(t)
                | FunctionKind::Static(t)
                | FunctionKind::AsyncStatic(t)
                | FunctionKind::StaticGetter(t)
                | FunctionKind::StaticSetter(t)
                | FunctionKind::Constructor(t) => t == id,
                _ => false,
            };
            if !of_this {
                continue;
            }
            members.push_str(&jsdoc(&f.docs, "    "));
            let params = self.params(f, Flow::Out);
            match f.kind {
                FunctionKind::Constructor(_) => {
                    has_constructor = true;
                    let _ = writeln!(members, "    constructor({params});");
                }
                FunctionKind::Static(_)
                | FunctionKind::AsyncStatic(_)
                | FunctionKind::StaticGetter(_)
                | FunctionKind::StaticSetter(_) => {
                    let _ = writeln!(
                        members,
                        "    static {}({params}): {};",
                        lower_camel(f.item_name()),
                        self.result(f, Flow::In)
                    );
                }
                _ => {
                    let _ = writeln!(
                        members,
                        "    {}({params}): {};",
                        lower_camel(f.item_name()),
                        self.result(f, Flow::In)
                    );
                }
            }
        }
        if !has_constructor {
            members.insert_str(0, "    private constructor();\n");
        }
        format!("{docs}  export class {name} {{\n{members}  }}\n")
    }

    /// How a type is written where it is used.
    fn ty(&self, ty: &Type, flow: Flow) -> String {
        match ty {
            Type::Bool => "boolean".to_owned(),
            Type::U8
            | Type::U16
            | Type::U32
            | Type::U64
            | Type::S8
            | Type::S16
            | Type::S32
            | Type::S64
            | Type::F32
            | Type::F64 => "number".to_owned(),
            Type::Char | Type::String => "string".to_owned(),
            Type::ErrorContext => "unknown".to_owned(),
            Type::Id(id) => {
                let def = &self.resolve.types[*id];
                match &def.name {
                    Some(name) => self.reference(*id, name),
                    None => self.anonymous(&def.kind, flow),
                }
            }
        }
    }

    /// A named type, qualified by its module when it is another module's.
    fn reference(&self, id: TypeId, name: &str) -> String {
        let name = upper_camel(name);
        match self.resolve.types[id].owner {
            TypeOwner::Interface(owner) if self.current.get() != Some(owner) => {
                match self.resolve.id_of(owner) {
                    Some(module) => format!("import({module:?}).{name}"),
                    None => name,
                }
            }
            _ => name,
        }
    }

    /// A type without a name of its own, written out.
    fn anonymous(&self, kind: &TypeDefKind, flow: Flow) -> String {
        match kind {
            TypeDefKind::Type(t) => self.ty(t, flow),
            TypeDefKind::Handle(Handle::Own(r) | Handle::Borrow(r)) => {
                let name = self.resolve.types[*r].name.clone().unwrap_or_default();
                self.reference(*r, &name)
            }
            TypeDefKind::List(Type::U8) | TypeDefKind::FixedLengthList(Type::U8, _) => {
                if flow == Flow::Out {
                    "Uint8Array | number[]".to_owned()
                } else {
                    "Uint8Array".to_owned()
                }
            }
            TypeDefKind::List(t) | TypeDefKind::FixedLengthList(t, _) => {
                format!("Array<{}>", self.ty(t, flow))
            }
            TypeDefKind::Map(k, v) => format!("Map<{}, {}>", self.ty(k, flow), self.ty(v, flow)),
            TypeDefKind::Tuple(t) => format!(
                "[{}]",
                t.types
                    .iter()
                    .map(|t| self.ty(t, flow))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            TypeDefKind::Option(inner) => {
                if self.is_option(inner) {
                    format!(
                        "{{ tag: \"some\"; val: {} }} | {{ tag: \"none\" }}",
                        self.ty(inner, flow)
                    )
                } else {
                    format!("{} | null", self.ty(inner, flow))
                }
            }
            TypeDefKind::Result(r) => {
                let side = |tag: &str, t: &Option<Type>| match t {
                    Some(t) => format!("{{ tag: {tag:?}; val: {} }}", self.ty(t, flow)),
                    None => format!("{{ tag: {tag:?}; val?: undefined }}"),
                };
                format!("{} | {}", side("ok", &r.ok), side("err", &r.err))
            }
            TypeDefKind::Stream(t) => {
                let (chunk, batch) = match t {
                    Some(Type::U8) => ("Uint8Array".to_owned(), "Uint8Array".to_owned()),
                    Some(t) => {
                        let item = self.ty(t, Flow::In);
                        (item.clone(), format!("Array<{item}>"))
                    }
                    None => ("void".to_owned(), "Array<void>".to_owned()),
                };
                match flow {
                    Flow::In => format!("WitStreamReadable<{chunk}, {batch}>"),
                    Flow::Out => format!("WitStreamSource<{chunk}, {batch}>"),
                }
            }
            TypeDefKind::Future(t) => format!(
                "WitFutureReadable<{}>",
                t.as_ref()
                    .map_or_else(|| "void".to_owned(), |t| self.ty(t, Flow::In))
            ),
            // Named kinds are declared, not written out.
            TypeDefKind::Record(_)
            | TypeDefKind::Flags(_)
            | TypeDefKind::Variant(_)
            | TypeDefKind::Enum(_)
            | TypeDefKind::Resource
            | TypeDefKind::Unknown => "unknown".to_owned(),
        }
    }

    /// Whether `ty` is an `option` (possibly through aliases).
    fn is_option(&self, ty: &Type) -> bool {
        match ty {
            Type::Id(id) => match &self.resolve.types[*id].kind {
                TypeDefKind::Option(_) => true,
                TypeDefKind::Type(t) => self.is_option(t),
                _ => false,
            },
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_javascript_conventions() {
        assert_eq!(lower_camel("receive-error"), "receiveError");
        assert_eq!(lower_camel("new"), "new_");
        assert_eq!(upper_camel("ip-socket-address"), "IpSocketAddress");
        assert_eq!(upper_camel("handler"), "Handler");
    }

    #[test]
    fn the_gateway_world_declares_its_handler_and_connection() {
        let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit");
        let (resolve, world) = load_world(&wit, Some("sockgate:gateway/conn-handler")).unwrap();
        let text = declarations(&resolve, world);
        for wanted in [
            "declare module \"sockgate:gateway/handler@0.1.0\"",
            "export interface Handler {",
            "handle(id: number, rx: WitStreamReadable<Uint8Array, Uint8Array>): \
             Promise<WitStreamSource<Uint8Array, Uint8Array>>;",
            "export function info(id: number): ConnInfo | null;",
            "export type ConnInfo = import(\"sockgate:gateway/types@0.1.0\").ConnInfo;",
            "export type Transport = \"tcp\" | \"tls\" | \"quic\";",
            "serverName: string | null;",
        ] {
            assert!(text.contains(wanted), "no `{wanted}` in:\n{text}");
        }
    }
}
