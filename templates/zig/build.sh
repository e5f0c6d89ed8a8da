#!/usr/bin/env bash
# Builds {{name}}.wasm from app.zig:
#   1. C bindings for the world in wit/ (conn_handler.h, .c and the
#      component type object), by `sockgate c-guest bindings`;
#   2. the header as the Zig module `conn_handler`, by `zig translate-c`;
#   3. a core WebAssembly module, by `zig build-exe` for wasm32-wasi (a
#      reactor: a library the gateway calls into, no entry point), with
#      the bindings' C compiled beside app.zig;
#   4. the component, by `sockgate c-guest component`, which adds the
#      WASI preview1 adapter matching the gateway's wasmtime.
# Needs Zig 0.17 (`zig` on PATH, or a command in $ZIG, such as
# "python3 -m ziglang") and `sockgate` (on PATH, or in $SOCKGATE).
set -euo pipefail
cd "$(dirname "$0")"
SOCKGATE=${SOCKGATE:-sockgate}
ZIG=${ZIG:-zig}

mkdir -p build
"$SOCKGATE" c-guest bindings wit build
$ZIG translate-c build/conn_handler.h -target wasm32-wasi -lc >build/conn_handler.zig
$ZIG build-exe -target wasm32-wasi -mexec-model=reactor -fno-entry -O ReleaseSmall -lc \
    -femit-bin=build/{{name}}.core.wasm -I build \
    build/conn_handler.c build/conn_handler_component_type.o \
    --dep conn_handler -Mroot=app.zig -Mconn_handler=build/conn_handler.zig
"$SOCKGATE" c-guest component build/{{name}}.core.wasm {{name}}.wasm
echo "built {{name}}.wasm"
