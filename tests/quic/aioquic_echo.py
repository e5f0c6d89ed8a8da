#!/usr/bin/env python3
"""Echo check with aioquic, a QUIC implementation independent of quinn.

Opens one QUIC connection to the gateway, sends a deterministic pattern on
each of --streams bidirectional streams concurrently, finishes each stream,
reads until the server's FIN and compares. Prints one `stream ok N BYTES`
line per stream that came back identical; exits non-zero otherwise.
"""

import argparse
import asyncio
import ssl
import sys

from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration


def pattern(seed: int, length: int) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(length))


async def one_stream(client, index: int, length: int) -> bool:
    reader, writer = await client.create_stream()
    data = pattern(index, length)
    writer.write(data)
    writer.write_eof()
    back = await reader.read()  # until the server's FIN
    if back != data:
        print(f"stream {index}: got {len(back)} bytes, expected {len(data)}; they differ")
        return False
    print(f"stream ok {index} {len(back)}")
    return True


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-name", required=True)
    parser.add_argument("--alpn", required=True)
    parser.add_argument("--ca", required=True, help="PEM file of the CA to trust")
    parser.add_argument("--bytes", type=int, default=65536)
    parser.add_argument("--streams", type=int, default=1)
    args = parser.parse_args()

    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[args.alpn],
        server_name=args.server_name,
        verify_mode=ssl.CERT_REQUIRED,
    )
    config.load_verify_locations(args.ca)
    async with connect(args.host, args.port, configuration=config) as client:
        results = await asyncio.wait_for(
            asyncio.gather(*(one_stream(client, i, args.bytes) for i in range(args.streams))),
            timeout=60,
        )
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
