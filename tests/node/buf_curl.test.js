// Checks hamletd from a generic gRPC tool that knows nothing of Hamlet, `buf curl`.
// hamletd has two listeners. On the admin listener `buf curl` learns the schema
// through server reflection, so these tests prove that reflection and health
// work there and that AdminService is callable from its reflected descriptors
// alone, with the admin token from <data_dir>/admin.token. The device listener
// has no reflection: SyncService is called there with the schema compiled from
// the repository's .proto files (--schema), with a token enrolled through
// AdminService. Also runs `buf lint` on the .proto files.
//
// Run: node --test tests/node/buf_curl.test.js
// The server binary is $HAMLETD (default /work/main/build/server/hamletd). The
// script starts its own hamletd on free loopback ports (device and admin
// listeners) in a fresh temp dir and stops it with SIGTERM when done, also when a
// test fails.

'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { startServer, stopServer, guard } = require('./hamletd');

const BUF = path.join(__dirname, 'node_modules/.bin/buf');
const PROTO_ROOT = path.resolve(__dirname, '../../proto');

const BUF_TIMEOUT_MS = 15_000;
const SCRIPT_LIMIT_MS = 60_000;
const SEEDED_UNITS = 289; // AdminUnit records hamletd seeds on first start.
const TOWN_CODE = '206'; // hamletd's default --town_code.

// The standard gRPC health service, for calling Health/Check on the device
// listener, which offers no reflection. Written to the temp dir at start.
const HEALTH_PROTO = `syntax = "proto3";

package grpc.health.v1;

message HealthCheckRequest {
  string service = 1;
}

message HealthCheckResponse {
  enum ServingStatus {
    UNKNOWN = 0;
    SERVING = 1;
    NOT_SERVING = 2;
    SERVICE_UNKNOWN = 3;
  }
  ServingStatus status = 1;
}

service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);
}
`;

// ---------------------------------------------------------------------------
// Server lifecycle.

let server = null; // See hamletd.js startServer, plus healthSchema; null until it is ready.

guard('buf_curl.test.js', SCRIPT_LIMIT_MS);

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
// neither Connect nor HTTP/1.1). Resolves with buf's { code, stdout, stderr }.
function runCurl(args) {
  return runBuf(['curl', '--protocol', 'grpc', '--http2-prior-knowledge', ...args]);
}

// As runCurl; fails the test unless buf exits with 0, and returns stdout.
async function curl(...args) {
  const res = await runCurl(args);
  assert.equal(res.code, 0, `buf curl ${redact(args.join(' '))} exited with ${res.code}\n${res.stderr}${res.stdout}`);
  return res.stdout;
}

// As curl, but the RPC must fail with the gRPC status `code` (a name as the
// Connect error JSON spells it, e.g. "unauthenticated"). buf prints that JSON on
// stderr and exits with the numeric gRPC code times 8.
const GRPC_CODES = { permission_denied: 7, unimplemented: 12, unauthenticated: 16 };
async function curlFails(code, ...args) {
  const res = await runCurl(args);
  const what = `buf curl ${redact(args.join(' '))}`;
  assert.notEqual(res.code, 0, `${what} succeeded, expected ${code}: ${res.stdout}`);
  let error;
  try {
    error = JSON.parse(res.stderr);
  } catch {
    assert.fail(`${what} exited with ${res.code} but printed no error JSON:\n${res.stderr}${res.stdout}`);
  }
  assert.equal(error.code, code, `${what}: ${res.stderr}`);
  assert.equal(res.code, GRPC_CODES[code] * 8, `${what}: exit code for ${code}`);
  return error;
}

// Tokens stay out of failure messages.
const redact = (text) => text.replace(/hmt_[A-Za-z0-9_-]+/g, 'hmt_…');

const bearer = (token) => ['-H', `authorization: Bearer ${token}`];
// The device listener has no reflection: the schema comes from the repository's
// buf module (proto/buf.yaml; buf provides the google/protobuf imports itself).
const WITH_SCHEMA = ['--schema', PROTO_ROOT, '--reflect=false'];

const lines = (text) => text.split('\n').map((l) => l.trim()).filter((l) => l !== '');

before(async () => {
  server = await startServer({ prefix: 'hamlet-buf-test-' });
  // The standard health.proto, as a --schema dir for the device listener.
  server.healthSchema = path.join(server.dir, 'health-schema');
  fs.mkdirSync(path.join(server.healthSchema, 'grpc/health/v1'), { recursive: true });
  fs.writeFileSync(path.join(server.healthSchema, 'grpc/health/v1/health.proto'), HEALTH_PROTO);
});

after(async () => {
  const ended = await stopServer(server);
  // SIGTERM is the documented clean shutdown: the process must exit with 0.
  if (ended && server.address) {
    assert.deepEqual(ended, { code: 0, signal: null }, `hamletd did not stop cleanly\n${server.stderr.join('')}`);
  }
});

// ---------------------------------------------------------------------------
// Tests.

const ADMIN_METHODS = [
  'hamlet.v1.AdminService/CreateBackup',
  'hamlet.v1.AdminService/EnrollDevice',
  'hamlet.v1.AdminService/ExportBundle',
  'hamlet.v1.AdminService/GetReplicationStatus',
  'hamlet.v1.AdminService/GetReport',
  'hamlet.v1.AdminService/GetServerStats',
  'hamlet.v1.AdminService/ImportBundle',
  'hamlet.v1.AdminService/ListAuditEntries',
  'hamlet.v1.AdminService/ListConflicts',
  'hamlet.v1.AdminService/ListDevices',
  'hamlet.v1.AdminService/PauseReplication',
  'hamlet.v1.AdminService/ResolveConflict',
  'hamlet.v1.AdminService/ResumeReplication',
  'hamlet.v1.AdminService/RevokeDevice',
  'hamlet.v1.AdminService/VerifyBackups',
];

test('reflection on the admin listener lists health, reflection and AdminService, not SyncService', { timeout: 20_000 }, async () => {
  const services = lines(await curl('--list-services', `http://${server.adminAddress}`));
  for (const name of ['grpc.health.v1.Health', 'grpc.reflection.v1alpha.ServerReflection', 'hamlet.v1.AdminService']) {
    assert.ok(services.includes(name), `${name} missing from --list-services: ${JSON.stringify(services)}`);
  }
  assert.ok(!services.includes('hamlet.v1.SyncService'), `the admin listener offers SyncService: ${JSON.stringify(services)}`);
});

test('reflection lists the AdminService methods', { timeout: 20_000 }, async () => {
  // With reflection, --list-methods takes the server's base URL (buf curl --help)
  // and lists the methods of every service as "package.Service/Method".
  const methods = lines(await curl('--list-methods', `http://${server.adminAddress}`))
    .filter((m) => m.startsWith('hamlet.v1.AdminService/'))
    .sort();
  assert.deepEqual(methods, ADMIN_METHODS);
});

test('the gRPC health check answers SERVING on both listeners', { timeout: 20_000 }, async () => {
  // Admin listener: schema by reflection.
  const adminHealth = `http://${server.adminAddress}/grpc.health.v1.Health/Check`;
  assert.deepEqual(JSON.parse(await curl(adminHealth)), { status: 'SERVING' });
  assert.deepEqual(JSON.parse(await curl('-d', '{"service":"hamlet.v1.AdminService"}', adminHealth)), {
    status: 'SERVING',
  });
  // Device listener: no reflection, so the schema is the standard health.proto.
  const deviceHealth = `http://${server.address}/grpc.health.v1.Health/Check`;
  const schema = ['--schema', server.healthSchema, '--reflect=false'];
  assert.deepEqual(JSON.parse(await curl(...schema, deviceHealth)), { status: 'SERVING' });
  assert.deepEqual(JSON.parse(await curl(...schema, '-d', '{"service":"hamlet.v1.SyncService"}', deviceHealth)), {
    status: 'SERVING',
  });
});

// grpc++'s reflection library registers its plugin for every server builder
// once linked in; hamletd takes it off the device listener (WithoutReflection).
test('the device listener offers no server reflection', { timeout: 20_000 }, async () => {
  const res = await runCurl(['--list-services', `http://${server.address}`]);
  assert.notEqual(res.code, 0, `the device listener answered reflection: ${JSON.stringify(lines(res.stdout))}`);
});

test('GetServerStats works through reflection with the admin token', { timeout: 20_000 }, async () => {
  const url = `http://${server.adminAddress}/hamlet.v1.AdminService/GetServerStats`;
  const stats = JSON.parse(await curl(...bearer(server.adminToken), url));
  assert.match(stats.serverId, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  // uint64 is a decimal string in JSON. A fresh server holds the seeded units only.
  assert.equal(stats.lastSeq, String(SEEDED_UNITS));
  assert.equal(stats.townCode, TOWN_CODE);

  // Without a token, or with a token that is not an admin's, it is refused.
  await curlFails('unauthenticated', url);
  await curlFails('unauthenticated', ...bearer('garbage'), url);
  // AdminService is not served on the device listener.
  await curlFails(
    'unimplemented',
    ...WITH_SCHEMA,
    ...bearer(server.adminToken),
    `http://${server.address}/hamlet.v1.AdminService/GetServerStats`,
  );
});

test('a device enrolled through AdminService pulls over the device listener with --schema', { timeout: 30_000 }, async () => {
  // Enrol, through reflection on the admin listener.
  const deviceId = crypto.randomUUID();
  const enrolment = JSON.parse(
    await curl(
      ...bearer(server.adminToken),
      '-d',
      JSON.stringify({ deviceId, personId: 'person-buf-curl', role: 'ROLE_TEAM_LEADER', unitCode: '07132', ttl: '3600s' }),
      `http://${server.adminAddress}/hamlet.v1.AdminService/EnrollDevice`,
    ),
  );
  assert.equal(enrolment.deviceId, deviceId);
  assert.match(enrolment.token, /^hmt_[A-Za-z0-9_-]+$/);
  assert.ok(Date.parse(enrolment.expireTime) > Date.now(), `expireTime ${enrolment.expireTime} must be ahead`);
  const auth = bearer(enrolment.token);

  // Pull on the device listener, the schema from the .proto files.
  const url = `http://${server.address}/hamlet.v1.SyncService/Pull`;
  const first = JSON.parse(
    await curl(...WITH_SCHEMA, ...auth, '-d', JSON.stringify({ deviceId, scopeUnitCode: '07132', pageSize: 5 }), url),
  );
  assert.equal(first.records.length, 5);
  assert.equal(typeof first.nextCursor, 'string'); // bytes are base64 in JSON.
  assert.ok(first.nextCursor.length > 0, 'nextCursor must be set');
  // On a fresh server the commune scope holds exactly the seeded admin units,
  // and remaining is exact.
  assert.match(first.remaining, /^\d+$/);
  assert.equal(Number(first.remaining), SEEDED_UNITS - 5);
  for (const r of first.records) {
    assert.ok(r.adminUnit, `seeded record ${r.id} should be an AdminUnit`);
  }

  // The cursor survives the base64 round trip: the next page follows on.
  const second = JSON.parse(
    await curl(
      ...WITH_SCHEMA,
      ...auth,
      '-d',
      JSON.stringify({ deviceId, scopeUnitCode: '07132', cursor: first.nextCursor, pageSize: 5 }),
      url,
    ),
  );
  assert.equal(second.records.length, 5);
  assert.equal(Number(second.remaining), SEEDED_UNITS - 10);
  const firstIds = new Set(first.records.map((r) => r.id));
  assert.ok(!second.records.some((r) => firstIds.has(r.id)), 'the second page repeats records of the first');
  const lastSeq = BigInt(first.records[first.records.length - 1].serverSeq);
  assert.ok(second.records.every((r) => BigInt(r.serverSeq) > lastSeq), 'the second page must come after the first');

  // The same pull without the token, or for a commune outside the device's, is refused.
  const body = JSON.stringify({ deviceId, scopeUnitCode: '07132', pageSize: 5 });
  await curlFails('unauthenticated', ...WITH_SCHEMA, '-d', body, url);
  await curlFails(
    'permission_denied',
    ...WITH_SCHEMA,
    ...auth,
    '-d',
    JSON.stringify({ deviceId, scopeUnitCode: '07135', pageSize: 5 }),
    url,
  );
  // SyncService is not served on the admin listener.
  await curlFails('unimplemented', ...WITH_SCHEMA, ...auth, '-d', body, `http://${server.adminAddress}/hamlet.v1.SyncService/Pull`);

  // Once revoked (through reflection again) the token is refused.
  const revoked = JSON.parse(
    await curl(
      ...bearer(server.adminToken),
      '-d',
      JSON.stringify({ deviceId, reason: 'buf curl test' }),
      `http://${server.adminAddress}/hamlet.v1.AdminService/RevokeDevice`,
    ),
  );
  assert.equal(revoked.device.deviceId, deviceId);
  assert.ok(revoked.device.revokeTime, 'revokeTime must be set');
  await curlFails('unauthenticated', ...WITH_SCHEMA, ...auth, '-d', body, url);
});

test('buf lint passes on the .proto files', { timeout: 20_000 }, async () => {
  // proto/buf.yaml configures the module and the STANDARD lint rules.
  const res = await runBuf(['lint'], { cwd: PROTO_ROOT });
  assert.equal(res.code, 0, `buf lint exited with ${res.code}\n${res.stdout}${res.stderr}`);
});
