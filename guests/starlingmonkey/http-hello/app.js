// Hello over HTTP: a `wasi:http` 0.2 component (world `wasi:http/proxy`,
// export `wasi:http/incoming-handler`) in JavaScript on StarlingMonkey,
// built with componentize-js (see guests/build-lang.sh). StarlingMonkey
// gives it the web's `fetch` event: each request is a `FetchEvent`, and the
// gateway creates an instance for each.

addEventListener("fetch", (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const url = new URL(request.url);
  const page =
    "<!doctype html>\n<html><head><title>Hello from JavaScript</title></head>" +
    `<body><h1>Hello from JavaScript</h1><p>${escape(url.pathname)} over ` +
    `${url.protocol.replace(":", "")}.</p></body></html>\n`;
  return new Response(page, {
    headers: { "content-type": "text/html; charset=utf-8" },
  });
}

function escape(text) {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
}
