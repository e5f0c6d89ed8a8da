// Echo for the world conn-handler (WASI 0.3, async), in Go: sends every
// byte a client sends straight back, and closes its sending side when the
// client closes its own.
//
// Built with Go's wasip1 port and the bindings of `wit-bindgen go` (see
// guests/build-lang.sh); this file is the package the bindings call into,
// export_sockgate_gateway_handler. Each connection is a goroutine: a read
// or a write that has to wait parks it, and the component model's event
// loop resumes it when the stream is ready.
package export_sockgate_gateway_handler

import (
	"wit_component/sockgate_gateway_handler"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Bytes read per Read call: large enough for bulk transfers, small enough
// to keep thousands of connections cheap.
const readChunk = 16 * 1024

// Handle is called once per client connection. It returns the stream to
// the client at once and serves it from a goroutine.
func Handle(id uint64, rx *witTypes.StreamReader[uint8]) *witTypes.StreamReader[uint8] {
	tx, out := sockgate_gateway_handler.MakeStreamU8()
	go echo(rx, tx)
	return out
}

// echo copies rx to tx until the client closes its sending side (or stops
// reading), then drops both ends, which closes the connection.
func echo(rx *witTypes.StreamReader[uint8], tx *witTypes.StreamWriter[uint8]) {
	defer rx.Drop()
	defer tx.Drop()
	buf := make([]uint8, readChunk)
	for !rx.WriterDropped() {
		n := rx.Read(buf)
		if tx.WriteAll(buf[:n]) < n {
			return // the client went away
		}
	}
}
