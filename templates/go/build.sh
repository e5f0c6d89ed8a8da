#!/usr/bin/env bash
# Builds {{name}}.wasm from the .go files here:
#   1. the Go module build/go, by `sockgate go-guest bindings`: bindings for
#      the world in wit/ (as `wit-bindgen go` makes them), the Go support
#      module they import (so no module proxy is needed), and overlay.json,
#      the runtime hooks Go's wasip1 port lacks (for `go build -overlay`);
#   2. this project's .go files, copied into the package the bindings call
#      (the name the first step prints: export_sockgate_gateway_handler);
#   3. a core WebAssembly module, by `go build` for GOOS=wasip1 (c-shared:
#      a reactor the gateway calls into);
#   4. the component, by `sockgate go-guest component`, which embeds the
#      world and adds the WASI preview1 adapter matching the gateway's
#      wasmtime.
# Needs Go 1.27 (`go` on PATH, or in $GO) and `sockgate` (on PATH, or in
# $SOCKGATE).
set -euo pipefail
cd "$(dirname "$0")"
SOCKGATE=${SOCKGATE:-sockgate}
GO=${GO:-go}
export GO

rm -rf build/go
package=$("$SOCKGATE" go-guest bindings wit build/go)
cp ./*.go "build/go/$package/"
(cd build/go && GOOS=wasip1 GOARCH=wasm GOPROXY=off GOTOOLCHAIN=local \
    "$GO" build -trimpath -overlay overlay.json -buildmode=c-shared \
    -ldflags=-checklinkname=0 -o ../{{name}}.core.wasm .)
"$SOCKGATE" go-guest component wit build/{{name}}.core.wasm {{name}}.wasm
echo "built {{name}}.wasm"
