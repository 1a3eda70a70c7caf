#!/usr/bin/env node
// Echo server on Node `ws` (npm, pinned in package.json; `npm ci` here installs it), a
// deflate-capable peer of scripts/bench.sh's compressed echo.
//
// --deflate: permessage-deflate with the library's defaults (context takeover, zlib's level and
// windows, messages under 1 KiB sent uncompressed, compression on libuv's thread pool);
// --no-deflate (the library's default for servers) declines offers.
// Usage: node ws-echo.js --addr 127.0.0.1:9006 [--deflate | --no-deflate]
'use strict';
const { WebSocketServer } = require('ws');

const args = process.argv.slice(2);
let addr = '127.0.0.1:9006';
let deflate = true;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--addr') addr = args[++i];
  else if (args[i] === '--deflate') deflate = true;
  else if (args[i] === '--no-deflate') deflate = false;
  else {
    console.error(`ws-echo.js: unknown argument ${args[i]}`);
    process.exit(2);
  }
}
const at = addr.lastIndexOf(':');
const wss = new WebSocketServer({
  host: addr.slice(0, at),
  port: Number(addr.slice(at + 1)),
  perMessageDeflate: deflate ? {} : false,
  maxPayload: 64 << 20,
});
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
wss.on('listening', () => console.error(`ws-echo.js: listening on ${addr}, deflate ${deflate}`));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
