// An echo server and a client over a Unix stream socket with Node.js's `net` (libuv: epoll,
// non-blocking read/write/writev, accept4), for tests/tests/apps/runtimes.rs.
//
//   node echo_node.js server PATH                 echo every byte back, half-close on EOF
//   node echo_node.js client PATH ROUNDS          ROUNDS messages of mixed sizes (1 B to 300 KB),
//                                                 each echoed in full before the next, then EOF
//   node echo_node.js cluster PATH rr|none        the server as a cluster of 2 workers: `rr`
//                                                 (Node's default on Linux) has the primary
//                                                 accept and pass each socket to a worker
//   node echo_node.js clients PATH N ROUNDS       N concurrent clients of ROUNDS text lines
//
// The client prints what it sent and got (counts and SHA-256), never timings: the plain and
// swapped runs' outputs must be identical.
'use strict';
const net = require('net');
const crypto = require('crypto');
const cluster = require('cluster');
const fs = require('fs');
const [mode, path, a, b] = process.argv.slice(2);

function echo(socket) {
  socket.on('data', (d) => socket.write(d));
  socket.on('end', () => socket.end());
}

function serve() {
  try { fs.unlinkSync(path); } catch (e) { /* not there */ }
  net.createServer(echo).listen(path, () => console.log('ready'));
  process.on('SIGTERM', () => process.exit(0));
}

function clusterServe(policy) {
  cluster.schedulingPolicy = policy === 'rr' ? cluster.SCHED_RR : cluster.SCHED_NONE;
  if (cluster.isPrimary) {
    try { fs.unlinkSync(path); } catch (e) { /* not there */ }
    let listening = 0;
    cluster.on('listening', () => { if (++listening === 2) console.log('ready'); });
    for (let i = 0; i < 2; i++) cluster.fork();
    process.on('SIGTERM', () => {
      for (const id in cluster.workers) cluster.workers[id].process.kill('SIGTERM');
      process.exit(0);
    });
  } else {
    net.createServer(echo).listen(path);
  }
}

function client(rounds) {
  const socket = net.createConnection(path);
  const out = crypto.createHash('sha256');
  const back = crypto.createHash('sha256');
  let seed = 7;
  const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
  let sent = 0, got = 0, round = 0;
  const next = () => {
    if (round === rounds) { socket.end(); return; }
    const len = [1, 64, 1000, 70000, 300000][rnd() % 5] + (rnd() % 50);
    const msg = Buffer.alloc(len);
    for (let i = 0; i < len; i += 61) msg[i] = rnd() & 255;
    out.update(msg);
    sent += len;
    round++;
    socket.write(msg);
  };
  socket.on('connect', next);
  socket.on('data', (d) => { back.update(d); got += d.length; if (got === sent) next(); });
  socket.on('end', () => {
    const same = out.digest('hex') === back.digest('hex');
    console.log(`rounds ${round}, sent ${sent}, got ${got}, echo ${same ? 'identical' : 'DIFFERENT'}`);
  });
}

function clients(n, rounds) {
  let ok = 0, closed = 0;
  for (let c = 0; c < n; c++) {
    const socket = net.createConnection(path);
    let round = 0, want = '', buf = '';
    const line = () => `client ${c} round ${round} ${'x'.repeat((c * 37 + round * 11) % 3000)}\n`;
    const send = () => { want = line(); socket.write(want); };
    socket.on('connect', send);
    socket.on('data', (d) => {
      buf += d;
      if (buf.length < want.length) return;
      if (buf === want) ok++;
      buf = '';
      if (++round < rounds) send(); else socket.end();
    });
    socket.on('close', () => { if (++closed === n) console.log(`${ok} of ${n * rounds} lines echoed intact`); });
  }
}

if (mode === 'server') serve();
else if (mode === 'cluster') clusterServe(a);
else if (mode === 'client') client(+a);
else if (mode === 'clients') clients(+a, +b);
else { console.error(`unknown mode ${mode}`); process.exit(2); }
