//! {{name}}: a sockgate guest. It echoes every byte a client sends, and
//! closes its sending side when the client closes its own. Edit `Conn.run`
//! (the per-connection state machine) to make it yours.
//!
//! The bindings are wit-bindgen's C bindings of the world in wit/, which
//! `zig translate-c` turns into the Zig module `conn_handler` and `zig
//! build-exe` compiles beside this file (see build.sh). The component model
//! knows no Zig async runtime: `handle` is a callback-style async export,
//! so each connection is a small state machine (`Conn`) kept in the task's
//! context slot, moved forward by `exports_sockgate_gateway_handler_handle`
//! once and then by `..._handle_callback` for every event it waited for.

const std = @import("std");
const wit = @import("conn_handler");

/// A panic writes its message to stderr (the app's log) and traps. Zig's
/// default handler would also link its stack-trace printer, which reads
/// debug info through the filesystem: five times the module's size and two
/// dozen WASI imports, for traces a wasm guest cannot print anyway (the
/// gateway's trap event has the wasm backtrace).
pub const panic = std.debug.FullPanic(struct {
    fn panic(message: []const u8, _: ?usize) noreturn {
        _ = std.c.write(2, message.ptr, message.len);
        _ = std.c.write(2, "\n", 1);
        @trap();
    }
}.panic);

/// Bytes read per `read` call: large enough for bulk transfers, small
/// enough to keep thousands of connections cheap.
const read_chunk = 16 * 1024;

const Reader = wit.exports_sockgate_gateway_handler_stream_u8_t;
const Writer = wit.exports_sockgate_gateway_handler_stream_u8_writer_t;
const Status = wit.conn_handler_waitable_status_t;
const Code = wit.conn_handler_callback_code_t;

/// The connections' memory: the C allocator, which the bindings' own
/// `cabi_realloc` uses too.
const allocator = std.heap.c_allocator;

/// A read or write that has to wait reports this instead of a status.
const blocked: Status = std.math.maxInt(Status);

/// Whether a finished read or write completed (rather than finding the
/// other end dropped): the low four bits of its status.
fn completed(status: Status) bool {
    return status & 0xf == wit.CONN_HANDLER_WAITABLE_COMPLETED;
}

/// How many bytes a finished read or write moved: the rest of its status.
fn count(status: Status) usize {
    return status >> 4;
}

/// One connection: what was read from the client and not yet written
/// back, and whether the client has closed its sending side.
const Conn = struct {
    rx: Reader,
    tx: Writer,
    set: wit.conn_handler_waitable_set_t,
    /// Bytes `buf[done..len]` are still to be written back.
    len: usize = 0,
    done: usize = 0,
    /// The client closed its sending side: finish writing, then close ours.
    rx_ended: bool = false,
    buf: [read_chunk]u8 = undefined,

    fn create(rx: Reader) *Conn {
        const conn = allocator.create(Conn) catch @panic("out of memory for a connection");
        var tx: Writer = undefined;
        const out = wit.exports_sockgate_gateway_handler_stream_u8_new(&tx);
        conn.* = .{ .rx = rx, .tx = tx, .set = wit.conn_handler_waitable_set_new() };
        // Return the stream to the client at once; serve it afterwards.
        wit.exports_sockgate_gateway_handler_handle_return(out);
        wit.conn_handler_waitable_join(conn.rx, conn.set);
        wit.conn_handler_waitable_join(conn.tx, conn.set);
        return conn;
    }

    /// Ends the connection: dropping both ends closes it; the task exits.
    fn finish(conn: *Conn) Code {
        wit.exports_sockgate_gateway_handler_stream_u8_drop_readable(conn.rx);
        wit.exports_sockgate_gateway_handler_stream_u8_drop_writable(conn.tx);
        wit.conn_handler_waitable_set_drop(conn.set);
        allocator.destroy(conn);
        return wit.CONN_HANDLER_CALLBACK_CODE_EXIT;
    }

    /// Waits for the operation just started, with `conn` as the task's state.
    fn wait(conn: *Conn) Code {
        wit.conn_handler_context_set_0(conn);
        // CONN_HANDLER_CALLBACK_CODE_WAIT(set), which translate-c types as
        // a signed int: "wait" (2) for the set in the upper bits.
        return 2 | (conn.set << 4);
    }

    /// A read finished: queue its bytes for writing.
    fn readDone(conn: *Conn, status: Status) void {
        conn.len = count(status);
        conn.done = 0;
        if (!completed(status)) conn.rx_ended = true;
    }

    /// A write finished; false if the client went away.
    fn writeDone(conn: *Conn, status: Status) bool {
        conn.done += count(status);
        return completed(status);
    }

    /// Moves the connection forward until an operation blocks (then waits
    /// for it) or the connection is over.
    fn run(conn: *Conn) Code {
        while (true) {
            if (conn.done < conn.len) {
                const rest = conn.buf[conn.done..conn.len];
                const status = wit.exports_sockgate_gateway_handler_stream_u8_write(conn.tx, rest.ptr, rest.len);
                if (status == blocked) return conn.wait();
                if (!conn.writeDone(status)) return conn.finish();
            } else if (conn.rx_ended) {
                return conn.finish();
            } else {
                const status = wit.exports_sockgate_gateway_handler_stream_u8_read(conn.rx, &conn.buf, conn.buf.len);
                if (status == blocked) return conn.wait();
                conn.readDone(status);
            }
        }
    }
};

/// Called once per client connection (`id` names it for
/// `sockgate_gateway_connection_info`).
export fn exports_sockgate_gateway_handler_handle(id: u64, rx: Reader) Code {
    _ = id;
    return Conn.create(rx).run();
}

/// Called for every event a connection's task waited for.
export fn exports_sockgate_gateway_handler_handle_callback(event: *wit.conn_handler_event_t) Code {
    const conn: *Conn = @ptrCast(@alignCast(wit.conn_handler_context_get_0()));
    switch (event.event) {
        wit.CONN_HANDLER_EVENT_STREAM_READ => conn.readDone(event.code),
        wit.CONN_HANDLER_EVENT_STREAM_WRITE => if (!conn.writeDone(event.code)) return conn.finish(),
        // Nothing else is waited for; cancellation ends the connection.
        else => return conn.finish(),
    }
    return conn.run();
}
