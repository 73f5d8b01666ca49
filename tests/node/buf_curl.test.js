// Checks hamletd from a generic gRPC tool that knows nothing of Hamlet: `buf curl`
// learns the schema through server reflection, so these tests prove that the
// reflection and health services work and that SyncService is callable from its
// reflected descriptors alone. Also runs `buf lint` on the .proto files.
//
// Run: node --test tests/node/buf_curl.test.js
// The server binary is $HAMLETD (default /work/main/build/server/hamletd). The
// script starts its own hamletd on a free loopback port in a fresh temp dir and
// stops it with SIGTERM when done, also when a test fails.

'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, execFile } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const HAMLETD = process.env.HAMLETD || '/work/main/build/server/hamletd';
const BUF = path.join(__dirname, 'node_modules/.bin/buf');
const PROTO_ROOT = path.resolve(__dirname, '../../proto');

const READY_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 15_000; // hamletd's default --shutdown_grace is 10 s.
const BUF_TIMEOUT_MS = 15_000;
const SCRIPT_LIMIT_MS = 60_000;
const SEEDED_UNITS = 249; // AdminUnit records hamletd seeds on first start.

// ---------------------------------------------------------------------------
// Server lifecycle.

let server = null; // { child, dir, address, stderr: string[], exit() }

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function startServer() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hamlet-buf-test-'));
  const readyFile = path.join(dir, 'ready');
  const child = spawn(
    HAMLETD,
    ['--listen=127.0.0.1:0', `--data_dir=${path.join(dir, 'data')}`, `--ready_file=${readyFile}`],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const stderr = [];
  child.stderr.on('data', (chunk) => stderr.push(chunk.toString()));
  let exited = null;
  child.on('exit', (code, signal) => (exited = { code, signal }));
  child.on('error', (err) => (exited = { error: err }));
  server = { child, dir, address: null, stderr, exit: () => exited };

  // The ready file holds "127.0.0.1:PORT\n" once the server accepts calls. It is
  // not written atomically, so only a complete line counts.
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (exited) {
      throw new Error(`hamletd exited before it was ready: ${JSON.stringify(exited)}\n${stderr.join('')}`);
    }
    let text = '';
    try {
      text = fs.readFileSync(readyFile, 'utf8');
    } catch {
      // Not written yet.
    }
    if (/^127\.0\.0\.1:\d+\n/.test(text)) {
      server.address = text.trim();
      return;
    }
    await sleep(50);
  }
  throw new Error(`hamletd wrote no ready file within ${READY_TIMEOUT_MS} ms\n${stderr.join('')}`);
}

// Sends SIGTERM and waits for the process to end (SIGKILL as a last resort).
// Returns how it ended.
async function stopServer() {
  if (!server) return null;
  const { child, dir } = server;
  if (server.exit() === null) {
    child.kill('SIGTERM');
    const deadline = Date.now() + STOP_TIMEOUT_MS;
    while (server.exit() === null && Date.now() < deadline) await sleep(50);
    if (server.exit() === null) child.kill('SIGKILL');
  }
  const result = server.exit();
  fs.rmSync(dir, { recursive: true, force: true });
  return result;
}

// If the test runner dies for any reason, do not leave hamletd behind.
process.on('exit', () => {
  if (server && server.exit() === null) server.child.kill('SIGTERM');
});

// Bounds the whole script: whatever hangs, stop the server and fail.
const watchdog = setTimeout(() => {
  process.stderr.write(`buf_curl.test.js: still running after ${SCRIPT_LIMIT_MS} ms; giving up\n`);
  if (server && server.exit() === null) server.child.kill('SIGTERM');
  process.exit(1);
}, SCRIPT_LIMIT_MS);
watchdog.unref();

// ---------------------------------------------------------------------------
// buf.

// Runs buf with `args` in `cwd`; resolves with { code, stdout, stderr } whatever
// the exit code (buf reports a failed RPC through a non-zero exit code).
function runBuf(args, { cwd = __dirname } = {}) {
  return new Promise((resolve, reject) => {
    execFile(
      BUF,
      args,
      {
        cwd,
        timeout: BUF_TIMEOUT_MS,
        // Keep buf's cache inside the test's temp dir rather than $HOME.
        env: { ...process.env, BUF_CACHE_DIR: path.join(server ? server.dir : os.tmpdir(), 'buf-cache') },
      },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') return reject(err); // Not started, or killed by the timeout.
        resolve({ code: err ? err.code : 0, stdout, stderr });
      },
    );
  });
}

// `buf curl` over plain-text HTTP/2 with the gRPC protocol (hamletd serves
// neither Connect nor HTTP/1.1). Fails the test unless buf exits with 0.
async function curl(...args) {
  const res = await runBuf(['curl', '--protocol', 'grpc', '--http2-prior-knowledge', ...args]);
  assert.equal(res.code, 0, `buf curl ${args.join(' ')} exited with ${res.code}\n${res.stderr}${res.stdout}`);
  return res.stdout;
}

const lines = (text) => text.split('\n').map((l) => l.trim()).filter((l) => l !== '');

before(async () => {
  await startServer();
});

after(async () => {
  const ended = await stopServer();
  // SIGTERM is the documented clean shutdown: the process must exit with 0.
  if (ended && server.address) {
    assert.deepEqual(ended, { code: 0, signal: null }, `hamletd did not stop cleanly\n${server.stderr.join('')}`);
  }
});

// ---------------------------------------------------------------------------
// Tests.

test('reflection lists the health, sync and reflection services', { timeout: 20_000 }, async () => {
  const services = lines(await curl('--list-services', `http://${server.address}`));
  for (const name of ['grpc.health.v1.Health', 'hamlet.v1.SyncService', 'grpc.reflection.v1alpha.ServerReflection']) {
    assert.ok(services.includes(name), `${name} missing from --list-services: ${JSON.stringify(services)}`);
  }
});

test('reflection lists the SyncService methods', { timeout: 20_000 }, async () => {
  // With reflection, --list-methods takes the server's base URL (buf curl --help)
  // and lists the methods of every service as "package.Service/Method".
  const methods = lines(await curl('--list-methods', `http://${server.address}`))
    .filter((m) => m.startsWith('hamlet.v1.SyncService/'))
    .sort();
  assert.deepEqual(methods, [
    'hamlet.v1.SyncService/Pull',
    'hamlet.v1.SyncService/Push',
    'hamlet.v1.SyncService/ResolveConflict',
    'hamlet.v1.SyncService/Watch',
  ]);
});

test('the gRPC health check answers SERVING', { timeout: 20_000 }, async () => {
  const out = await curl(`http://${server.address}/grpc.health.v1.Health/Check`);
  assert.deepEqual(JSON.parse(out), { status: 'SERVING' });
});

test('Pull works through reflection with the JSON mapping', { timeout: 20_000 }, async () => {
  const url = `http://${server.address}/hamlet.v1.SyncService/Pull`;
  const deviceId = crypto.randomUUID();
  const first = JSON.parse(await curl('-d', JSON.stringify({ deviceId, scopeUnitCode: '07132', pageSize: 5 }), url));
  assert.equal(first.records.length, 5);
  assert.equal(typeof first.nextCursor, 'string'); // bytes are base64 in JSON.
  assert.ok(first.nextCursor.length > 0, 'nextCursor must be set');
  // uint64 is a decimal string in JSON. On a fresh server the commune scope holds
  // exactly the seeded admin units, and remaining is exact.
  assert.match(first.remaining, /^\d+$/);
  assert.ok(Number(first.remaining) > 0);
  assert.equal(Number(first.remaining), SEEDED_UNITS - 5);
  for (const r of first.records) {
    assert.ok(r.adminUnit, `seeded record ${r.id} should be an AdminUnit`);
  }

  // The cursor survives the base64 round trip: the next page follows on.
  const second = JSON.parse(
    await curl('-d', JSON.stringify({ deviceId, scopeUnitCode: '07132', cursor: first.nextCursor, pageSize: 5 }), url),
  );
  assert.equal(second.records.length, 5);
  assert.equal(Number(second.remaining), SEEDED_UNITS - 10);
  const firstIds = new Set(first.records.map((r) => r.id));
  assert.ok(!second.records.some((r) => firstIds.has(r.id)), 'the second page repeats records of the first');
  const lastSeq = BigInt(first.records[first.records.length - 1].serverSeq);
  assert.ok(second.records.every((r) => BigInt(r.serverSeq) > lastSeq), 'the second page must come after the first');
});

test('buf lint passes on the .proto files', { timeout: 20_000 }, async () => {
  // proto/buf.yaml configures the module and the STANDARD lint rules.
  const res = await runBuf(['lint'], { cwd: PROTO_ROOT });
  assert.equal(res.code, 0, `buf lint exited with ${res.code}\n${res.stdout}${res.stderr}`);
});
