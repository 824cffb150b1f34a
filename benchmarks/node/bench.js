#!/usr/bin/env node
// Load generator and echo backend for wsgate's benchmarks (benchmarks/run.py
// drives it; see benchmarks/README.md). Node `ws` with the native
// `bufferutil` and `utf-8-validate`, so the load generator is not the
// bottleneck a Python client would be.
//
//   node bench.js backend [--plain-port P] [--deflate-port P] [--tcp-port P]
//   node bench.js rtt --url U [--conns N] [--size B] [--payload text|compressible]
//                     [--deflate] [--warmup S] [--duration S] [--ca FILE]
//   node bench.js stream --url U/stream?size=B [--deflate] [--warmup S] [--duration S] [--ca FILE]
//   node bench.js handshake --url U [--concurrency N] [--warmup S] [--duration S] [--ca FILE]
//   node bench.js idle --url U [--conns N] [--concurrency N] [--deflate] [--ca FILE]
//   node bench.js huge --url U/huge?size=B [--rate BYTES_PER_S] [--timeout S] [--ca FILE]
//
// Every mode writes JSON lines to stdout; the orchestrator reads the proxy's
// CPU and memory from /proc when it sees an event:
//
//   backend    {"event":"listening","plain":P,"deflate":P,"tcp":P}
//   rtt, stream, handshake
//              {"event":"start"} after the warm-up, {"event":"end",...figures}
//              after the measured window, {"event":"exit"} once closed.
//   idle       {"event":"warm"} then waits for "go" on stdin; {"event":"open",...}
//              once every connection is open and has echoed one message, then
//              waits for "close" on stdin; {"event":"closed"}.
//   huge       {"event":"connected"} then waits for "go" on stdin; {"event":"end",...}.
//
// Backend paths: /echo (anything but the two below) echoes every message
// with its type; /stream?size=B sends B-byte binary messages back to back
// (with backpressure) until the client closes; /huge?size=B&frag=F waits for
// one message, then sends one B-byte binary message in F-byte fragments.
// The TCP port is a raw stream source, a VNC server's framebuffer updates
// as far as compression goes: it writes 64 KiB of random bytes over and
// over (with backpressure) to whoever connects, and ignores what it reads.
//
// Every loop is bounded: the timed modes stop at their deadline, connection
// attempts time out, and each mode has an overall deadline (--deadline S).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const readline = require('node:readline');
const tls = require('node:tls');
const { WebSocket, WebSocketServer } = require('ws');

// Fail loudly if the native helpers are missing: without them ws falls back
// to JavaScript masking and UTF-8 checks, and the load generator slows down.
require('bufferutil');
require('utf-8-validate');

const MAX_PAYLOAD = 1024 * 1024 * 1024;

function parseArgs(argv) {
  const opts = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) {
      opts._.push(a);
      continue;
    }
    const key = a.slice(2);
    const next = argv[i + 1];
    if (next === undefined || next.startsWith('--')) {
      opts[key] = true;
    } else {
      opts[key] = next;
      i++;
    }
  }
  return opts;
}

function num(opts, key, dflt) {
  if (opts[key] === undefined) return dflt;
  const v = Number(opts[key]);
  if (!Number.isFinite(v)) throw new Error(`--${key}: not a number: ${opts[key]}`);
  return v;
}

function emit(record) {
  process.stdout.write(JSON.stringify(record) + '\n');
}

function die(message) {
  process.stderr.write(`bench.js: ${message}\n`);
  process.exit(2);
}

// Overall deadline for any mode, so a stuck run cannot hang the orchestrator.
function armDeadline(seconds) {
  const t = setTimeout(() => die(`deadline of ${seconds} s passed`), seconds * 1000);
  t.unref();
}

function stdinLines(onLine) {
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => onLine(line.trim()));
  rl.on('close', () => onLine('eof'));
}

function clientOptions(opts, deflate) {
  const o = {
    perMessageDeflate: deflate ? { threshold: 0 } : false,
    maxPayload: MAX_PAYLOAD,
    handshakeTimeout: 10000,
    followRedirects: false,
  };
  if (opts.ca) o.ca = fs.readFileSync(opts.ca);
  return o;
}

// -- payloads -----------------------------------------------------------------

function prng(seed) {
  // mulberry32: deterministic, so every target gets the same messages.
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const WORDS = (
  'alpha beta gamma delta status update price quantity order user account ' +
  'session message channel room token value event stream market open close ' +
  'high low volume timestamp sequence symbol bid ask level trade fill cancel ' +
  'accepted rejected pending ok error retry latency region primary replica'
).split(' ');

// A pool of distinct messages of exactly `size` bytes (ASCII text).
// 'compressible': JSON-like records built from a small vocabulary (deflate
// shrinks them several times); 'text': random letters.
function makePayloads(size, kind, count) {
  const rand = prng(42);
  const out = [];
  for (let n = 0; n < count; n++) {
    let s;
    if (kind === 'compressible') {
      const parts = [];
      let len = 0;
      let i = 0;
      while (len < size) {
        const w = WORDS[Math.floor(rand() * WORDS.length)];
        const v = Math.floor(rand() * 100000);
        const item = `{"k":"${w}","v":${v},"i":${i++}},`;
        parts.push(item);
        len += item.length;
      }
      s = `[${parts.join('')}`.slice(0, size - 1) + ']';
    } else {
      const chars = [];
      for (let i = 0; i < size; i++) chars.push(97 + Math.floor(rand() * 26));
      s = String.fromCharCode(...chars);
    }
    out.push(Buffer.from(s, 'latin1'));
  }
  return out;
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

function summarizeLatency(samples) {
  const s = Float64Array.from(samples).sort();
  let sum = 0;
  for (const v of s) sum += v;
  return {
    p50_us: percentile(s, 50),
    p99_us: percentile(s, 99),
    mean_us: s.length ? sum / s.length : null,
    max_us: s.length ? s[s.length - 1] : null,
  };
}

const MAX_SAMPLES = 5_000_000;

// -- backend ------------------------------------------------------------------

function backend(opts) {
  const chunks = new Map();
  const chunkOf = (size) => {
    if (!chunks.has(size)) chunks.set(size, crypto.randomBytes(size));
    return chunks.get(size);
  };

  // Keep up to `depth` sends handed to the socket at once; each send's
  // callback (data flushed to the kernel) sends the next.
  function pump(ws, next, depth) {
    let inflight = 0;
    let finished = false;
    const go = () => {
      while (!finished && inflight < depth && ws.readyState === WebSocket.OPEN) {
        const item = next();
        if (item === null) {
          finished = true;
          return;
        }
        inflight++;
        ws.send(item.data, { binary: true, fin: item.fin }, (err) => {
          inflight--;
          if (!err) go();
        });
      }
    };
    go();
  }

  function onConnection(ws, req) {
    ws.on('error', () => {});
    const url = new URL(req.url, 'http://127.0.0.1');
    const size = Number(url.searchParams.get('size') || 0);
    if (url.pathname === '/stream' && size > 0) {
      const data = chunkOf(size);
      pump(ws, () => ({ data, fin: true }), 4);
    } else if (url.pathname === '/huge' && size > 0) {
      const frag = Number(url.searchParams.get('frag') || 1024 * 1024);
      ws.once('message', () => {
        let sent = 0;
        pump(
          ws,
          () => {
            if (sent >= size) return null;
            const n = Math.min(frag, size - sent);
            sent += n;
            return { data: chunkOf(frag).subarray(0, n), fin: sent >= size };
          },
          4,
        );
      });
    } else {
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    }
  }

  const listen = (port, deflate) =>
    new Promise((resolve, reject) => {
      const wss = new WebSocketServer({
        host: '127.0.0.1',
        port,
        backlog: 4096,
        clientTracking: false,
        maxPayload: MAX_PAYLOAD,
        perMessageDeflate: deflate ? { threshold: 0 } : false,
      });
      wss.on('connection', onConnection);
      wss.on('listening', () => resolve(wss.address().port));
      wss.on('error', reject);
    });

  const listenTcp = (port) =>
    new Promise((resolve, reject) => {
      const server = net.createServer((sock) => {
        sock.setNoDelay(true);
        sock.on('error', () => {});
        sock.on('data', () => {});
        const data = chunkOf(64 * 1024);
        const go = () => {
          while (!sock.destroyed && sock.write(data));
        };
        sock.on('drain', go);
        go();
      });
      server.on('error', reject);
      server.listen({ host: '127.0.0.1', port, backlog: 4096 }, () => resolve(server.address().port));
    });

  Promise.all([
    listen(num(opts, 'plain-port', 0), false),
    listen(num(opts, 'deflate-port', 0), true),
    listenTcp(num(opts, 'tcp-port', 0)),
  ])
    .then(([plain, deflate, tcp]) => emit({ event: 'listening', plain, deflate, tcp }))
    .catch((err) => die(`backend: ${err.message}`));
  const stop = () => process.exit(0);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

// -- shared client pieces -------------------------------------------------------

// Open `n` connections, at most `concurrency` handshakes at a time; resolves
// with the open sockets and the number that failed.
function openMany(url, options, n, concurrency, onOpen) {
  return new Promise((resolve) => {
    const open = [];
    let started = 0;
    let settled = 0;
    let errors = 0;
    let firstError = null;
    const startOne = () => {
      if (started >= n) return;
      started++;
      const ws = new WebSocket(url, options);
      let done = false;
      const settle = (ok) => {
        if (done) return;
        done = true;
        settled++;
        if (ok) open.push(ws);
        if (settled === n) resolve({ open, errors, firstError });
        else startOne();
      };
      ws.on('error', (err) => {
        errors++;
        firstError = firstError || String(err.message);
        settle(false);
      });
      ws.on('close', () => settle(false));
      ws.on('open', () => {
        if (onOpen) onOpen(ws, () => settle(true));
        else settle(true);
      });
    };
    if (n === 0) resolve({ open, errors, firstError });
    for (let i = 0; i < Math.min(concurrency, n); i++) startOne();
  });
}

function closeAll(sockets, timeoutMs) {
  return new Promise((resolve) => {
    let left = sockets.filter((ws) => ws.readyState !== WebSocket.CLOSED).length;
    if (left === 0) {
      resolve();
      return;
    }
    const t = setTimeout(() => {
      for (const ws of sockets) ws.terminate();
      resolve();
    }, timeoutMs);
    for (const ws of sockets) {
      if (ws.readyState === WebSocket.CLOSED) continue;
      ws.once('close', () => {
        if (--left === 0) {
          clearTimeout(t);
          resolve();
        }
      });
      ws.close(1000);
    }
  });
}

function cpuSeconds() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

// Warm up for `warmup` s, then measure for `duration` s: `measuring` tells
// the callbacks whether to count.
function timedWindow(warmup, duration, hooks) {
  return new Promise((resolve) => {
    setTimeout(() => {
      hooks.begin();
      const t0 = process.hrtime.bigint();
      const c0 = cpuSeconds();
      emit({ event: 'start' });
      setTimeout(() => {
        const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
        const cpu = cpuSeconds() - c0;
        resolve({ seconds, client_cpu_pct: (100 * cpu) / seconds });
      }, duration * 1000);
    }, warmup * 1000);
  });
}

// -- rtt: round trips over N connections -----------------------------------------

async function rtt(opts) {
  const conns = num(opts, 'conns', 1);
  const size = num(opts, 'size', 64);
  const payloads = makePayloads(size, opts.payload || 'text', 256);
  const options = clientOptions(opts, !!opts.deflate);
  const { open, errors, firstError } = await openMany(opts.url, options, conns, 50);
  if (open.length !== conns) die(`rtt: ${errors} of ${conns} connections failed: ${firstError}`);
  let measuring = false;
  let stopped = false;
  let count = 0;
  let bytes = 0;
  let warm = 0;
  let wsErrors = 0;
  const samples = [];
  for (let k = 0; k < open.length; k++) {
    const ws = open[k];
    let i = k * 7;
    let sentAt = 0n;
    const send = () => {
      sentAt = process.hrtime.bigint();
      ws.send(payloads[i++ % payloads.length], { binary: false });
    };
    ws.on('error', () => wsErrors++);
    ws.on('message', (data) => {
      if (measuring) {
        count++;
        bytes += data.length;
        if (samples.length < MAX_SAMPLES) samples.push(Number(process.hrtime.bigint() - sentAt) / 1000);
      } else {
        warm++;
      }
      if (!stopped) send();
    });
    send();
  }
  const window = await timedWindow(num(opts, 'warmup', 1), num(opts, 'duration', 3), {
    begin: () => {
      measuring = true;
    },
  });
  measuring = false;
  stopped = true;
  emit({
    event: 'end',
    conns,
    size,
    messages: count,
    payload_bytes: bytes,
    msg_per_s: count / window.seconds,
    ...summarizeLatency(samples),
    seconds: window.seconds,
    client_cpu_pct: window.client_cpu_pct,
    warmup_messages: warm,
    errors: wsErrors,
    extensions: open[0].extensions || '',
  });
  await closeAll(open, 5000);
  emit({ event: 'exit' });
  process.exit(0);
}

// -- stream: 1 MiB binary messages from the backend --------------------------------

async function stream(opts) {
  const options = clientOptions(opts, !!opts.deflate);
  const { open, errors, firstError } = await openMany(opts.url, options, 1, 1);
  if (open.length !== 1) die(`stream: connection failed (${errors}): ${firstError}`);
  const ws = open[0];
  let measuring = false;
  let messages = 0;
  let bytes = 0;
  ws.on('message', (data) => {
    if (measuring) {
      messages++;
      bytes += data.length;
    }
  });
  const window = await timedWindow(num(opts, 'warmup', 1), num(opts, 'duration', 3), {
    begin: () => {
      measuring = true;
    },
  });
  measuring = false;
  emit({
    event: 'end',
    messages,
    payload_bytes: bytes,
    mb_per_s: bytes / 1e6 / window.seconds,
    msg_per_s: messages / window.seconds,
    seconds: window.seconds,
    client_cpu_pct: window.client_cpu_pct,
    extensions: ws.extensions || '',
  });
  // Keep reading (and dropping) what is still in flight until the close
  // handshake completes: the backend stops sending once it sees our close.
  await closeAll([ws], 3000);
  emit({ event: 'exit' });
  process.exit(0);
}

// -- handshake: connections opened and closed, `concurrency` at a time -------------

async function handshake(opts) {
  const concurrency = num(opts, 'concurrency', 8);
  const options = clientOptions(opts, !!opts.deflate);
  let measuring = false;
  let stopped = false;
  let opened = 0;
  let completed = 0;
  let errors = 0;
  let firstError = null;
  let active = 0;
  const samples = [];
  let allClosed = null;
  const one = () => {
    active++;
    const t0 = process.hrtime.bigint();
    const counted = measuring;
    const ws = new WebSocket(opts.url, options);
    ws.on('error', (err) => {
      if (counted) errors++;
      firstError = firstError || String(err.message);
    });
    ws.on('open', () => {
      if (measuring) {
        opened++;
        if (samples.length < MAX_SAMPLES) samples.push(Number(process.hrtime.bigint() - t0) / 1000);
      }
      ws.close(1000);
    });
    ws.on('close', () => {
      active--;
      if (measuring) completed++;
      if (!stopped) one();
      else if (active === 0 && allClosed) allClosed();
    });
  };
  for (let i = 0; i < concurrency; i++) one();
  const window = await timedWindow(num(opts, 'warmup', 1), num(opts, 'duration', 3), {
    begin: () => {
      measuring = true;
    },
  });
  measuring = false;
  stopped = true;
  emit({
    event: 'end',
    handshakes: opened,
    closed: completed,
    per_s: opened / window.seconds,
    ...summarizeLatency(samples),
    errors,
    first_error: firstError,
    seconds: window.seconds,
    client_cpu_pct: window.client_cpu_pct,
  });
  await new Promise((resolve) => {
    allClosed = resolve;
    if (active === 0) resolve();
    setTimeout(resolve, 10000);
  });
  emit({ event: 'exit' });
  process.exit(0);
}

// -- idle: many open connections, each used once -------------------------------------

async function idle(opts) {
  const conns = num(opts, 'conns', 1000);
  const concurrency = num(opts, 'concurrency', 64);
  const deflate = !!opts.deflate;
  const options = clientOptions(opts, deflate);
  const [payload] = makePayloads(1024, 'compressible', 1);
  // One round trip per connection, so both legs' (de)compressors exist.
  const useOnce = (ws, ready) => {
    const t = setTimeout(() => ws.terminate(), 10000);
    ws.once('message', () => {
      clearTimeout(t);
      ready();
    });
    ws.send(payload, { binary: false });
  };
  const commands = [];
  let waiter = null;
  stdinLines((line) => {
    commands.push(line);
    if (waiter) waiter();
  });
  const nextCommand = () =>
    new Promise((resolve) => {
      const check = () => {
        if (commands.length) {
          waiter = null;
          resolve(commands.shift());
        } else waiter = check;
      };
      check();
    });

  // Warm the proxy up (its first connections load code and fill pools),
  // so the baseline taken after this excludes one-off costs.
  const warm = await openMany(opts.url, options, num(opts, 'warm', 100), concurrency, useOnce);
  await closeAll(warm.open, 5000);
  emit({ event: 'warm', opened: warm.open.length, errors: warm.errors });
  if ((await nextCommand()) !== 'go') process.exit(1);
  const t0 = process.hrtime.bigint();
  const res = await openMany(opts.url, options, conns, concurrency, useOnce);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  emit({
    event: 'open',
    requested: conns,
    opened: res.open.length,
    errors: res.errors,
    first_error: res.firstError,
    seconds,
    per_s: res.open.length / seconds,
    extensions: res.open.length ? res.open[0].extensions || '' : '',
  });
  await nextCommand();
  await closeAll(res.open, 30000);
  emit({ event: 'closed' });
  process.exit(0);
}

// -- huge: one big message read slowly over a raw socket ------------------------------

function huge(opts) {
  const url = new URL(opts.url);
  const secure = url.protocol === 'wss:';
  const port = Number(url.port || (secure ? 443 : 80));
  const rate = num(opts, 'rate', 64 * 1024 * 1024);
  const total = Number(url.searchParams.get('size'));
  const sock = secure
    ? tls.connect({ host: url.hostname, port, ca: opts.ca ? fs.readFileSync(opts.ca) : undefined })
    : net.connect({ host: url.hostname, port });
  const key = crypto.randomBytes(16).toString('base64');
  sock.once(secure ? 'secureConnect' : 'connect', () => {
    sock.write(
      `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n` +
        'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n' +
        `Sec-WebSocket-Key: ${key}\r\n\r\n`,
    );
  });
  sock.on('error', (err) => die(`huge: ${err.message}`));
  let head = Buffer.alloc(0);
  let upgraded = false;
  let started = false;
  let t0 = 0n;
  // Frame parser state: unmasked server frames, no extensions.
  let buf = Buffer.alloc(0);
  let remaining = 0; // payload bytes left in the current frame
  let frameFin = false;
  let frameData = false;
  let payload = 0;
  let frames = 0;
  let finished = false;
  // Pacing: at most rate/50 bytes per 20 ms slot.
  const slotMs = 20;
  const budget = (rate * slotMs) / 1000;
  let slotBytes = 0;
  let slotStart = Date.now();

  const finish = () => {
    finished = true;
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    emit({ event: 'end', payload_bytes: payload, frames, seconds, mb_per_s: payload / 1e6 / seconds });
    // A masked close frame (code 1000, mask key 0), then leave.
    sock.write(Buffer.from([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]));
    sock.resume();
    setTimeout(() => process.exit(0), 2000).unref();
    sock.on('close', () => process.exit(0));
  };

  const parse = () => {
    for (;;) {
      if (remaining > 0) {
        if (buf.length === 0) return;
        const n = Math.min(remaining, buf.length);
        if (frameData) payload += n;
        remaining -= n;
        buf = buf.subarray(n);
        if (remaining > 0) return;
        if (frameData && frameFin) return finish();
        continue;
      }
      if (buf.length < 2) return;
      const b0 = buf[0];
      const b1 = buf[1];
      let len = b1 & 0x7f;
      let off = 2;
      if (len === 126) {
        if (buf.length < 4) return;
        len = buf.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (buf.length < 10) return;
        len = Number(buf.readBigUInt64BE(2));
        off = 10;
      }
      if (b1 & 0x80) die('huge: masked frame from server');
      const opcode = b0 & 0x0f;
      if (opcode === 8) die(`huge: server closed after ${payload} bytes`);
      frameFin = (b0 & 0x80) !== 0;
      frameData = opcode === 0 || opcode === 2;
      frames++;
      buf = buf.subarray(off);
      remaining = len;
      if (len === 0 && frameData && frameFin) return finish();
    }
  };

  sock.on('data', (chunk) => {
    if (finished) return;
    if (!upgraded) {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      const status = head.subarray(0, head.indexOf('\r\n')).toString();
      if (!/^HTTP\/1\.1 101 /.test(status)) die(`huge: handshake failed: ${status}`);
      upgraded = true;
      buf = head.subarray(end + 4);
      sock.pause();
      emit({ event: 'connected' });
      stdinLines((line) => {
        if (line !== 'go' || started) return;
        started = true;
        t0 = process.hrtime.bigint();
        slotStart = Date.now();
        // A masked text frame "go" (mask key 0) asks the backend to start.
        sock.write(Buffer.from([0x81, 0x82, 0, 0, 0, 0, 0x67, 0x6f]));
        sock.resume();
      });
      return;
    }
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    parse();
    if (finished) return;
    slotBytes += chunk.length;
    if (slotBytes >= budget) {
      const wait = Math.max(0, slotMs - (Date.now() - slotStart));
      sock.pause();
      setTimeout(() => {
        slotBytes = 0;
        slotStart = Date.now();
        sock.resume();
      }, wait);
    } else if (Date.now() - slotStart >= slotMs) {
      slotBytes = 0;
      slotStart = Date.now();
    }
  });
}

// -- main -------------------------------------------------------------------------------

const opts = parseArgs(process.argv.slice(2));
const mode = opts._[0];
const modes = { backend, rtt, stream, handshake, idle, huge };
if (!modes[mode]) die(`mode must be one of ${Object.keys(modes).join(', ')}`);
if (mode !== 'backend') {
  if (!opts.url) die('--url is required');
  armDeadline(num(opts, 'deadline', 300));
}
Promise.resolve(modes[mode](opts)).catch((err) => die(`${mode}: ${err.stack || err}`));
