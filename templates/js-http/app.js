// An HTTP app: a `wasi:http` 0.2 component (world `wasi:http/proxy`) in
// JavaScript on StarlingMonkey. Each request is a web `FetchEvent`, served
// on an instance of its own, over HTTP/1.1, HTTP/2 and HTTP/3; the client's
// address is in the `sockgate-client-addr` header.

addEventListener("fetch", (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const url = new URL(request.url);
  return new Response(`Hello from {{name}}: you asked for ${url.pathname}\n`, {
    headers: { "content-type": "text/plain; charset=utf-8" },
  });
}
