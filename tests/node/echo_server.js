#!/usr/bin/env node
// A `ws` echo backend for wsgate's end-to-end tests.
//
//   node echo_server.js [PORT]      (PORT 0 or absent: any free port)
//
// Listens on 127.0.0.1 with permessage-deflate enabled and echoes every
// message with the type it came with (text stays text, binary stays
// binary). stdout is line-oriented so a test can follow it:
//
//   LISTENING <port>                     once, first line
//   {"event":"open", ...}                one JSON line per connection: what
//                                        the client offered, what ws accepted,
//                                        the subprotocol and request headers
//   {"event":"close", ...}               when that connection ends: close code,
//                                        messages and payload bytes echoed,
//                                        bytes read and written on the wire
//
// SIGTERM and SIGINT close every connection with 1001 and exit 0.
'use strict';

const { WebSocketServer } = require('ws');

const port = Number.parseInt(process.argv[2] || '0', 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write(`usage: node echo_server.js [PORT]; bad port ${process.argv[2]}\n`);
  process.exit(2);
}

function emit(record) {
  // stdout to a pipe is synchronous on Linux, so lines are never interleaved
  // or lost at exit.
  process.stdout.write(JSON.stringify(record) + '\n');
}

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  perMessageDeflate: true,
  // The gateway's default limit is 64 MiB; do not be the smaller one.
  maxPayload: 256 * 1024 * 1024,
});

// The response headers ws is about to send, per request, for the open record.
const responseHeaders = new WeakMap();
wss.on('headers', (headers, request) => {
  responseHeaders.set(request, headers.slice());
});

let nextId = 1;
wss.on('connection', (ws, request) => {
  const id = nextId++;
  const sent = responseHeaders.get(request) || [];
  const accepted = sent.find((h) => /^sec-websocket-extensions:/i.test(h));
  emit({
    event: 'open',
    id,
    path: request.url,
    remote: request.socket.remoteAddress,
    // What the client (wsgate's backend leg) offered ...
    offer: request.headers['sec-websocket-extensions'] || null,
    // ... and what ws accepted, both as negotiated and as sent on the wire.
    extensions: ws.extensions ? ws.extensions.split(',') : [],
    accepted: accepted ? accepted.replace(/^[^:]*:\s*/, '') : null,
    protocol: ws.protocol || null,
    requested_protocols: request.headers['sec-websocket-protocol'] || null,
    headers: request.headers,
  });
  let messages = 0;
  let bytes = 0;
  ws.on('message', (data, isBinary) => {
    messages += 1;
    bytes += data.length;
    ws.send(data, { binary: isBinary });
  });
  ws.on('error', (err) => {
    emit({ event: 'error', id, error: String(err && err.message) });
  });
  ws.on('close', (code, reason) => {
    emit({
      event: 'close',
      id,
      code,
      reason: reason.toString(),
      messages,
      bytes,
      // On the wire, handshake included: shows whether this leg compressed.
      wire_read: request.socket.bytesRead,
      wire_written: request.socket.bytesWritten,
    });
  });
});

wss.on('listening', () => {
  process.stdout.write(`LISTENING ${wss.address().port}\n`);
});

wss.on('error', (err) => {
  process.stderr.write(`echo_server: ${err.message}\n`);
  process.exit(1);
});

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  for (const ws of wss.clients) ws.close(1001, 'server shutting down');
  // Peers get a moment for the closing handshake, then are cut off.
  const force = setTimeout(() => {
    for (const ws of wss.clients) ws.terminate();
  }, 1000);
  force.unref();
  // Whatever still holds the loop after that does not keep us alive.
  setTimeout(() => process.exit(0), 3000).unref();
  wss.close(() => process.exit(0));
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
