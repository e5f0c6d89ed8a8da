// Echo for the WASI 0.2 world conn-handler-sync (one instance per
// connection), in Go: sends every byte a client sends straight back, and
// returns (which closes the connection) when the client closes its sending
// side.
//
// Built with Go's wasip1 port and the bindings of `wit-bindgen go` (see
// guests/build-lang.sh); this file is the package the bindings call into,
// export_sockgate_gateway_sync_handler. WASI 0.2 streams block the
// instance, which serves only this connection, so plain loops do.
package export_sockgate_gateway_sync_handler

import (
	. "wit_component/sockgate_gateway_sync_types"
	. "wit_component/wasi_io_streams"
)

// Most bytes asked for per read.
const readChunk = 64 * 1024

// Most bytes BlockingWriteAndFlush accepts per call (WASI 0.2).
const writeChunk = 4096

// Handle serves one connection on an instance created for it.
func Handle(info ConnInfo, rx *InputStream, tx *OutputStream) {
	defer rx.Drop()
	defer tx.Drop()
	for {
		read := rx.BlockingRead(readChunk)
		if read.IsErr() {
			return // closed: the client shut down its sending side
		}
		for data := read.Ok(); len(data) > 0; {
			n := min(len(data), writeChunk)
			if tx.BlockingWriteAndFlush(data[:n]).IsErr() {
				return // the client went away
			}
			data = data[n:]
		}
	}
}
