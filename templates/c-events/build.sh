#!/usr/bin/env bash
# Builds {{name}}.wasm from app.c:
#   1. C bindings for the event world in wit/ (conn_events.h, .c and the
#      component type object), by `sockgate c-guest bindings`;
#   2. a core WebAssembly module, by clang for wasm32-wasi (a reactor:
#      a library the gateway calls into, no main);
#   3. the component, by `sockgate c-guest component`, which adds the
#      WASI preview1 adapter matching the gateway's wasmtime.
# Needs clang-16, lld-16, wasi-libc and libclang-rt-16-dev-wasm32 (Debian),
# and `sockgate` on PATH (or in $SOCKGATE).
set -euo pipefail
cd "$(dirname "$0")"
SOCKGATE=${SOCKGATE:-sockgate}
CLANG=${CLANG:-clang-16}

mkdir -p build
"$SOCKGATE" c-guest bindings wit build --world sockgate:events/conn-events
"$CLANG" --target=wasm32-wasi -mexec-model=reactor -Os -Wall -Wextra \
    -I build app.c build/conn_events.c build/conn_events_component_type.o \
    -Wl,--strip-all -o build/{{name}}.core.wasm
"$SOCKGATE" c-guest component build/{{name}}.core.wasm {{name}}.wasm
echo "built {{name}}.wasm"
