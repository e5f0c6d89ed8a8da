// {{name}}: a sockgate guest. It echoes every byte a client sends, and
// closes its sending side when the client closes its own. Edit `serve` to
// make it yours.
//
// This file is the package the generated bindings call into
// (export_sockgate_gateway_handler): build.sh copies it next to them. Each
// connection is a goroutine; a read or write that has to wait parks it,
// and the gateway resumes it when the stream is ready, so plain blocking
// code serves thousands of connections on one instance. (Go timers do not
// wake a guest: to wait, call wasi_clocks_monotonic_clock.WaitFor; see the
// guest guide.)
package export_sockgate_gateway_handler

import (
	"wit_component/sockgate_gateway_handler"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Bytes read per Read call: large enough for bulk transfers, small enough
// to keep thousands of connections cheap.
const readChunk = 16 * 1024

// Handle is called once per client connection: `id` names it
// (sockgate_gateway_connection.Info(id) tells its peer address, transport,
// server name and ALPN); rx brings what the client sends. Return the
// stream to send back at once, and serve it from a goroutine.
func Handle(id uint64, rx *witTypes.StreamReader[uint8]) *witTypes.StreamReader[uint8] {
	tx, out := sockgate_gateway_handler.MakeStreamU8()
	go serve(id, rx, tx)
	return out
}

// serve copies rx to tx until the client closes its sending side (or stops
// reading), then drops both ends, which closes the connection.
func serve(id uint64, rx *witTypes.StreamReader[uint8], tx *witTypes.StreamWriter[uint8]) {
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
