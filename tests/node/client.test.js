// A real non-C++ client of hamletd: @grpc/grpc-js with the .proto files loaded at
// run time by @grpc/proto-loader. It checks the parts of the sync contract a
// device author relies on: push then pull, idempotent retries, batch id reuse,
// clock skew refusal and cursor validation; and enrolment: the test enrols its
// device through AdminService (admin listener, admin token from
// <data_dir>/admin.token) and sends the issued bearer token on every SyncService
// call. Also checked: calls without a valid token, writes outside the device's
// reach, revocation, device_id spoofing and which listener serves what; and a
// bundle (sync carried by hand) sealed and opened here from docs/PROTOCOL.md
// alone, with node's own HKDF and AES-GCM.
//
// Run: node --test tests/node/client.test.js
// The server binary is $HAMLETD (default /work/main/build/server/hamletd). The
// script starts its own hamletd on free loopback ports (device and admin
// listeners) in a fresh temp dir and stops it with SIGTERM when done, also when a
// test fails.

'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');

const fs = require('node:fs');
const os = require('node:os');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader'); // Also gives protobufjs descriptor.proto.
const protobuf = require('protobufjs');

const { startServer, stopServer, guard } = require('./hamletd');

const PROTO_ROOT = path.resolve(__dirname, '../../proto');

const CALL_DEADLINE_MS = 5_000;
const SCRIPT_LIMIT_MS = 60_000;
const SCOPE = '07132'; // A commune of the seeded town 206.
const OTHER_COMMUNE = '07135'; // Another commune of town 206, outside this device's reach.
const PERSON_ID = 'person-nodetest'; // The person the test device is enrolled for; also records' author.
const SEEDED_UNITS = 289; // AdminUnit records hamletd seeds on first start.
// Those a device of one commune receives: the province, its town, its commune
// and the commune's 12 villages.
const UNITS_OF_ONE_COMMUNE = 15;

// MediationCase field numbers (records.proto); stamps name body fields by number.
const FIELD = { summary: 5, status: 9, round: 10, outcome: 11 };
// status, round and outcome merge as one lifecycle value (merge.proto): a change
// that writes one of them stamps all three with one stamp.
const LIFECYCLE = ['status', 'round', 'outcome'];

const statusName = (code) => Object.keys(grpc.status).find((k) => grpc.status[k] === code) || String(code);

// ---------------------------------------------------------------------------
// Server lifecycle.

let server = null; // See hamletd.js startServer; null until it is ready.

guard('client.test.js', SCRIPT_LIMIT_MS);

// ---------------------------------------------------------------------------
// Client.

let client = null; // SyncService on the device listener.
let admin = null; // AdminService on the admin listener.
let deviceToken = null; // The bearer token AdminService issued for DEVICE_ID.
let services = null; // { SyncService, AdminService } constructors.

function loadServices() {
  const definition = protoLoader.loadSync(
    [path.join(PROTO_ROOT, 'hamlet/v1/sync.proto'), path.join(PROTO_ROOT, 'hamlet/v1/admin.proto')],
    {
      includeDirs: [PROTO_ROOT],
      keepCase: true,
      longs: String,
      enums: String,
      defaults: false,
    },
  );
  const v1 = grpc.loadPackageDefinition(definition).hamlet.v1;
  return { SyncService: v1.SyncService, AdminService: v1.AdminService };
}

// Metadata carrying `authorization: Bearer <token>`; no header if token is null.
// `authorization` is the raw header value, for malformed ones.
function authMetadata({ token = null, authorization = null } = {}) {
  const metadata = new grpc.Metadata();
  if (authorization !== null) metadata.set('authorization', authorization);
  else if (token !== null) metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}

// Calls unary `method` of `stub` with `metadata`; resolves with the response or
// rejects with the grpc-js ServiceError (code, details, trailing metadata).
function rpc(stub, method, request, metadata) {
  return new Promise((resolve, reject) => {
    stub[method](request, metadata, { deadline: Date.now() + CALL_DEADLINE_MS }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

// A SyncService call as the test device: with its enrolled token.
function call(method, request) {
  return rpc(client, method, request, authMetadata({ token: deviceToken }));
}

// An AdminService call with the admin token.
function adminCall(method, request) {
  return rpc(admin, method, request, authMetadata({ token: server.adminToken }));
}

// Enrols `deviceId` through AdminService and checks the response; returns the token.
async function enrol(deviceId, role, unitCode, personId = PERSON_ID) {
  const sentAt = Date.now();
  const res = await adminCall('EnrollDevice', {
    device_id: deviceId,
    person_id: personId,
    role,
    unit_code: unitCode,
    ttl: { seconds: '3600' },
  });
  assert.equal(res.device_id, deviceId);
  assert.match(res.token, /^hmt_[A-Za-z0-9_-]+$/);
  const expireMs = Number(res.expire_time.seconds) * 1000;
  assert.ok(Math.abs(expireMs - (sentAt + 3600_000)) < 60_000, `expire_time ${JSON.stringify(res.expire_time)} is not 1 h ahead`);
  return res.token;
}

// Runs `promise`, which must fail with gRPC status `code`; returns the error.
async function expectStatus(promise, code) {
  let response;
  try {
    response = await promise;
  } catch (err) {
    assert.equal(
      err.code,
      code,
      `expected ${statusName(code)} (${code}), got ${statusName(err.code)} (${err.code}): ${err.details}`,
    );
    return err;
  }
  assert.fail(`expected ${statusName(code)} (${code}), but the call succeeded: ${JSON.stringify(response)}`);
}

const DEVICE_ID = crypto.randomUUID();

// A new MediationCase record as a device would push it: envelope, body and one
// stamp per body field set, in increasing field-number order.
function newCase(body, { id = crypto.randomUUID(), physicalMs = Date.now(), unitCode = SCOPE } = {}) {
  const names = new Set(Object.keys(body));
  if (LIFECYCLE.some((name) => names.has(name))) LIFECYCLE.forEach((name) => names.add(name));
  const stamps = [...names]
    .map((name) => FIELD[name])
    .sort((a, b) => a - b)
    .map((field) => ({ field, stamp: { physical_ms: String(physicalMs), logical: 0, node: DEVICE_ID } }));
  return {
    id,
    unit_code: unitCode,
    author: PERSON_ID,
    create_time: { seconds: String(Math.floor(physicalMs / 1000)), nanos: (physicalMs % 1000) * 1e6 },
    sensitivity: 'SENSITIVITY_NORMAL',
    mediation_case: body,
    field_stamps: stamps,
  };
}

function pushRequest(changes, batchId = crypto.randomUUID(), deviceId = DEVICE_ID) {
  return { device_id: deviceId, batch_id: batchId, changes, app_version: 'node-test/1' };
}

// Pulls `scope` from `cursor` page by page until remaining is 0. Checks the
// paging contract on the way: remaining drops by at least each page's size (by
// more where the server skipped records the caller may not read, such as
// other communes' admin units),
// records come in increasing server_seq, and no record appears twice.
async function pullAll(cursor = Buffer.alloc(0), pageSize = 100) {
  const records = [];
  let previousRemaining = null;
  let lastSeq = 0n;
  for (let page = 0; page < 1000; page++) {
    const res = await call('Pull', { device_id: DEVICE_ID, scope_unit_code: SCOPE, cursor, page_size: pageSize });
    const got = res.records || [];
    const remaining = BigInt(res.remaining || '0');
    assert.ok(got.length <= pageSize, `page of ${got.length} records exceeds page_size ${pageSize}`);
    assert.ok(Buffer.isBuffer(res.next_cursor) && res.next_cursor.length > 0, 'next_cursor must always be set');
    if (previousRemaining !== null) {
      assert.ok(remaining <= previousRemaining - BigInt(got.length),
        `remaining must drop by at least the page's ${got.length} records (${previousRemaining} -> ${remaining})`);
    }
    for (const r of got) {
      const seq = BigInt(r.server_seq);
      assert.ok(seq > lastSeq, `records must come in increasing server_seq (${seq} after ${lastSeq})`);
      lastSeq = seq;
      records.push(r);
    }
    previousRemaining = remaining;
    cursor = res.next_cursor;
    if (remaining === 0n) {
      const ids = new Set(records.map((r) => r.id));
      assert.equal(ids.size, records.length, 'a pull returned the same record twice');
      return { records, cursor };
    }
    assert.ok(got.length > 0, 'a page with remaining > 0 must hold at least one record');
  }
  assert.fail('pull did not catch up within 1000 pages');
}

// Field stamps as comparable plain values (proto3 drops zero scalars on the wire).
function stampsOf(record) {
  return (record.field_stamps || []).map((fs) => ({
    field: fs.field,
    physical_ms: String(fs.stamp.physical_ms),
    logical: fs.stamp.logical || 0,
    node: fs.stamp.node,
  }));
}

// A Timestamp as a comparable plain value: proto3 drops a zero `nanos` on the
// wire, so a time on a whole second comes back without it.
function timeOf(ts) {
  return { seconds: String(ts.seconds), nanos: ts.nanos || 0 };
}

// Asserts that `pulled` is the merged state of the new record `sent`.
function assertSameRecord(pulled, sent) {
  assert.equal(pulled.id, sent.id);
  assert.equal(pulled.unit_code, sent.unit_code);
  assert.equal(pulled.author, sent.author);
  assert.deepEqual(timeOf(pulled.create_time), timeOf(sent.create_time));
  assert.equal(pulled.sensitivity, sent.sensitivity);
  assert.deepEqual(pulled.mediation_case, sent.mediation_case);
  assert.deepEqual(stampsOf(pulled), stampsOf(sent));
  assert.ok(!pulled.deleted, 'record must not be deleted');
}

before(async () => {
  server = await startServer({ prefix: 'hamlet-client-test-' });
  services = loadServices();
  client = new services.SyncService(server.address, grpc.credentials.createInsecure());
  admin = new services.AdminService(server.adminAddress, grpc.credentials.createInsecure());
  // The test device is a team leader of the commune: it may write mediation
  // cases in 07132 and its villages and read the commune.
  deviceToken = await enrol(DEVICE_ID, 'ROLE_TEAM_LEADER', SCOPE);
});

after(async () => {
  if (client) client.close();
  if (admin) admin.close();
  const ended = await stopServer(server);
  // SIGTERM is the documented clean shutdown: the process must exit with 0.
  if (ended && server.address) {
    assert.deepEqual(ended, { code: 0, signal: null }, `hamletd did not stop cleanly\n${server.stderr.join('')}`);
  }
});

// ---------------------------------------------------------------------------
// Tests. They share one server and run in order; each uses its own records.

test('a pushed MediationCase comes back from a paged pull with the same fields', { timeout: 20_000 }, async () => {
  const start = await pullAll();
  assert.ok(start.records.length >= UNITS_OF_ONE_COMMUNE,
    `scope ${SCOPE} must include the ${UNITS_OF_ONE_COMMUNE} admin units of the commune`);

  const record = newCase({ summary: 'Tranh chấp ranh giới đất giữa hai hộ', status: 'MEDIATION_STATUS_RECEIVED', round: 1 });
  const res = await call('Push', pushRequest([record]));
  assert.equal(res.applied_records, 1);
  assert.ok(BigInt(res.server_seq) > 0n, 'server_seq must be set');
  assert.ok(res.server_time && Number(res.server_time.seconds) > 0, 'server_time must be set');

  // Pull the whole scope with small pages so that several pages are needed.
  const all = await pullAll(Buffer.alloc(0), 50);
  assert.equal(all.records.length, start.records.length + 1);
  const found = all.records.filter((r) => r.id === record.id);
  assert.equal(found.length, 1, 'the pushed record must appear exactly once');
  assertSameRecord(found[0], record);
  assert.equal(found[0].server_seq, res.server_seq, "a one-record batch's seq is the record's seq");

  // From the earlier cursor only the new record is new.
  const since = await pullAll(start.cursor);
  assert.deepEqual(since.records.map((r) => r.id), [record.id]);
});

test('repeating a push returns the identical response and changes nothing', { timeout: 20_000 }, async () => {
  const record = newCase({ summary: 'Nợ tiền mua bán phân bón', status: 'MEDIATION_STATUS_RECEIVED', round: 1 });
  const request = pushRequest([record]);
  const first = await call('Push', request);
  const afterFirst = await pullAll();
  const stored = afterFirst.records.find((r) => r.id === record.id);
  assert.ok(stored, 'record must be stored after the first push');

  // A retry (same device_id, batch_id, content) is answered as the first time.
  const second = await call('Push', request);
  assert.deepEqual(second, first);

  // Nothing changed after the first push's cursor, and the record is stored once,
  // unchanged, at the same server_seq.
  const since = await pullAll(afterFirst.cursor);
  assert.equal(since.records.length, 0, `the retry wrote: ${JSON.stringify(since.records)}`);
  const all = await pullAll();
  const found = all.records.filter((r) => r.id === record.id);
  assert.equal(found.length, 1);
  assert.deepEqual(found[0], stored);
  assert.equal(found[0].server_seq, first.server_seq);
});

test('reusing a batch_id for different content is ALREADY_EXISTS and keeps the original', { timeout: 20_000 }, async () => {
  const batchId = crypto.randomUUID();
  const original = newCase({ summary: 'Mâu thuẫn gia đình', status: 'MEDIATION_STATUS_RECEIVED', round: 1 });
  const first = await call('Push', pushRequest([original], batchId));
  assert.equal(first.applied_records, 1);
  const afterFirst = await pullAll();

  // Same record, new summary, newer stamps: different content under the same batch_id.
  const changed = newCase(
    { summary: 'Nội dung khác hẳn', status: 'MEDIATION_STATUS_ASSIGNED', round: 1 },
    { id: original.id, physicalMs: Date.now() + 1 },
  );
  const err = await expectStatus(call('Push', pushRequest([changed], batchId)), grpc.status.ALREADY_EXISTS);
  assert.equal(err.code, 6);

  const since = await pullAll(afterFirst.cursor);
  assert.equal(since.records.length, 0, `the refused batch wrote: ${JSON.stringify(since.records)}`);
  const found = (await pullAll()).records.filter((r) => r.id === original.id);
  assert.equal(found.length, 1);
  assertSameRecord(found[0], original);
  assert.equal(found[0].server_seq, first.server_seq);
});

// Lean stamps, as docs/PROTOCOL.md describes them to a client author: stamps
// without a node are the pushing device's; a pull with lean_stamps names the
// writer once per record, and filling the nodes in gives the whole record.
test('lean stamps: pushed without node, pulled lean or whole', { timeout: 20_000 }, async () => {
  const whole = newCase({ summary: 'Tranh chấp lối đi chung', status: 'MEDIATION_STATUS_RECEIVED', round: 1 });
  const lean = structuredClone(whole);
  for (const fs of lean.field_stamps) delete fs.stamp.node;
  const before = await pullAll();
  const pushed = await call('Push', pushRequest([lean]));
  assert.equal(pushed.applied_records, 1);

  const plain = (await pullAll(before.cursor)).records.find((r) => r.id === whole.id);
  assertSameRecord(plain, whole);
  for (const fs of plain.field_stamps) assert.equal(fs.stamp.node, DEVICE_ID, 'a plain pull has whole stamps');

  const res = await call('Pull', { device_id: DEVICE_ID, scope_unit_code: SCOPE, cursor: before.cursor, lean_stamps: true });
  const got = (res.records || []).find((r) => r.id === whole.id);
  assert.ok(got, 'the lean pull returns the record');
  assert.equal(got.default_node, DEVICE_ID);
  for (const fs of got.field_stamps) assert.ok(!fs.stamp.node, 'the default writer is left out of each stamp');
  for (const fs of got.field_stamps) fs.stamp.node = fs.stamp.node || got.default_node;
  delete got.default_node;
  assertSameRecord(got, whole);
});

test('a stamp an hour ahead is FAILED_PRECONDITION with CLOCK_SKEW and writes nothing', { timeout: 20_000 }, async () => {
  const caughtUp = await pullAll();
  const record = newCase(
    { summary: 'Đồng hồ máy chạy nhanh', status: 'MEDIATION_STATUS_RECEIVED', round: 1 },
    { physicalMs: Date.now() + 3600_000 },
  );
  const sentAt = Date.now();
  const err = await expectStatus(call('Push', pushRequest([record])), grpc.status.FAILED_PRECONDITION);
  assert.equal(err.code, 9);

  // The trailers say why, and what time the server has so the device can correct.
  assert.deepEqual(err.metadata.get('hamlet-error-reason'), ['CLOCK_SKEW']);
  const serverTime = err.metadata.get('hamlet-server-time-ms');
  assert.equal(serverTime.length, 1, 'hamlet-server-time-ms trailer must be present once');
  assert.match(String(serverTime[0]), /^\d+$/);
  const skew = Math.abs(Number(serverTime[0]) - sentAt);
  assert.ok(skew < 60_000, `hamlet-server-time-ms ${serverTime[0]} is ${skew} ms from this machine's clock`);

  const since = await pullAll(caughtUp.cursor);
  assert.equal(since.records.length, 0, `the refused push wrote: ${JSON.stringify(since.records)}`);
  const all = await pullAll();
  assert.equal(all.records.length, caughtUp.records.length);
  assert.ok(!all.records.some((r) => r.id === record.id));
});

test('a pull with a garbage cursor is INVALID_ARGUMENT', { timeout: 20_000 }, async () => {
  const garbage = [
    Buffer.from('not a cursor'),
    Buffer.concat([Buffer.from([0x7f]), crypto.randomBytes(39)]), // Random, with an unknown version byte.
    Buffer.from([0x01, 0x05, 0x61]), // Starts like a version-1 cursor, then stops short.
  ];
  for (const cursor of garbage) {
    const err = await expectStatus(
      call('Pull', { device_id: DEVICE_ID, scope_unit_code: SCOPE, cursor, page_size: 5 }),
      grpc.status.INVALID_ARGUMENT,
    );
    assert.equal(err.code, 3, `cursor ${cursor.toString('hex')}`);
  }
});

// ---------------------------------------------------------------------------
// Enrolment and access. Each test that needs another device enrols its own, so
// that DEVICE_ID keeps working whatever order these run in.

test('calls without a valid token are UNAUTHENTICATED and write nothing', { timeout: 20_000 }, async () => {
  const caughtUp = await pullAll();
  const record = newCase({ summary: 'Không có token', status: 'MEDIATION_STATUS_RECEIVED', round: 1 });
  const pull = { device_id: DEVICE_ID, scope_unit_code: SCOPE, page_size: 5 };
  const unauthenticated = [
    ['no authorization header', authMetadata()],
    ['a garbage token', authMetadata({ token: 'garbage' })],
    ['a well-formed but unknown token', authMetadata({ token: `hmt_${crypto.randomBytes(32).toString('base64url')}` })],
    ['the right token without "Bearer "', authMetadata({ authorization: deviceToken })],
    ['an empty bearer token', authMetadata({ authorization: 'Bearer ' })],
  ];
  for (const [what, metadata] of unauthenticated) {
    for (const [method, request] of [['Pull', pull], ['Push', pushRequest([record])]]) {
      const err = await expectStatus(rpc(client, method, request, metadata), grpc.status.UNAUTHENTICATED);
      assert.equal(err.code, 16, `${method} with ${what}`);
    }
  }
  const since = await pullAll(caughtUp.cursor);
  assert.equal(since.records.length, 0, `an unauthenticated push wrote: ${JSON.stringify(since.records)}`);
});

test('a batch hiding a record outside the device unit is PERMISSION_DENIED and writes nothing', { timeout: 20_000 }, async () => {
  const caughtUp = await pullAll();
  // A village of the commune, from the seeded admin units: a commune team leader
  // covers its villages.
  const village = caughtUp.records.find((r) => r.admin_unit && r.admin_unit.parent_code === SCOPE);
  assert.ok(village, `no seeded village of ${SCOPE}`);

  const ok1 = newCase({ summary: 'Tranh chấp lối đi chung', status: 'MEDIATION_STATUS_RECEIVED', round: 1 });
  const ok2 = newCase(
    { summary: 'Tiếng ồn ban đêm', status: 'MEDIATION_STATUS_RECEIVED', round: 1 },
    { unitCode: village.admin_unit.code },
  );
  const outside = newCase(
    { summary: 'Vụ việc ở xã khác', status: 'MEDIATION_STATUS_RECEIVED', round: 1 },
    { unitCode: OTHER_COMMUNE },
  );
  const ok3 = newCase({ summary: 'Tranh chấp thừa kế', status: 'MEDIATION_STATUS_RECEIVED', round: 1 });

  const err = await expectStatus(call('Push', pushRequest([ok1, ok2, outside, ok3])), grpc.status.PERMISSION_DENIED);
  assert.equal(err.code, 7);
  assert.ok(err.details.includes(outside.id), `the error must name record ${outside.id}: ${err.details}`);
  for (const r of [ok1, ok2, ok3]) {
    assert.ok(!err.details.includes(r.id), `the error names the writable record ${r.id}: ${err.details}`);
  }

  // Nothing of the batch was written, not even its valid records.
  const since = await pullAll(caughtUp.cursor);
  assert.equal(since.records.length, 0, `the refused batch wrote: ${JSON.stringify(since.records)}`);
  const all = await pullAll();
  assert.equal(all.records.length, caughtUp.records.length);
  for (const r of [ok1, ok2, outside, ok3]) assert.ok(!all.records.some((p) => p.id === r.id), `${r.id} was written`);

  // The same record alone is refused too; the writable ones alone go through.
  const alone = await expectStatus(call('Push', pushRequest([outside])), grpc.status.PERMISSION_DENIED);
  assert.ok(alone.details.includes(outside.id), alone.details);
  const res = await call('Push', pushRequest([ok1, ok2, ok3]));
  assert.equal(res.applied_records, 3);
  const written = await pullAll(caughtUp.cursor);
  assert.deepEqual(written.records.map((r) => r.id).sort(), [ok1.id, ok2.id, ok3.id].sort());
  assertSameRecord(written.records.find((r) => r.id === ok2.id), ok2);
});

test('scope "" is the device\'s own commune; another commune is PERMISSION_DENIED', { timeout: 20_000 }, async () => {
  const res = await call('Pull', { device_id: DEVICE_ID, scope_unit_code: '', page_size: 5000 });
  const commune = await pullAll();
  assert.equal(BigInt(res.remaining || '0'), 0n);
  assert.deepEqual((res.records || []).map((r) => r.id), commune.records.map((r) => r.id));
  // Both spellings are the same scope, so the cursor of one continues the other.
  const next = await call('Pull', { device_id: DEVICE_ID, scope_unit_code: SCOPE, cursor: res.next_cursor });
  assert.equal((next.records || []).length, 0);

  for (const scope of [OTHER_COMMUNE, '206']) {
    const err = await expectStatus(
      call('Pull', { device_id: DEVICE_ID, scope_unit_code: scope, page_size: 5 }),
      grpc.status.PERMISSION_DENIED,
    );
    assert.equal(err.code, 7, `scope ${scope}`);
  }
});

test('a revoked device gets UNAUTHENTICATED; other devices keep working', { timeout: 20_000 }, async () => {
  const otherId = crypto.randomUUID();
  const otherToken = await enrol(otherId, 'ROLE_MEMBER', SCOPE, 'person-nodetest-2');
  const asOther = authMetadata({ token: otherToken });
  const pull = { device_id: otherId, scope_unit_code: '', page_size: 5 };
  const first = await rpc(client, 'Pull', pull, asOther);
  assert.equal(first.records.length, 5);

  const revoked = await adminCall('RevokeDevice', { device_id: otherId, reason: 'node test: phone lost' });
  assert.equal(revoked.device.device_id, otherId);
  assert.equal(revoked.device.role, 'ROLE_MEMBER');
  assert.equal(revoked.device.revoke_reason, 'node test: phone lost');
  assert.ok(revoked.device.revoke_time && Number(revoked.device.revoke_time.seconds) > 0, 'revoke_time must be set');

  const err = await expectStatus(rpc(client, 'Pull', pull, asOther), grpc.status.UNAUTHENTICATED);
  assert.equal(err.code, 16);
  const record = newCase({ summary: 'Máy đã bị thu hồi', status: 'MEDIATION_STATUS_RECEIVED', round: 1 });
  const pushErr = await expectStatus(
    rpc(client, 'Push', pushRequest([record], crypto.randomUUID(), otherId), asOther),
    grpc.status.UNAUTHENTICATED,
  );
  assert.equal(pushErr.code, 16);

  // The test device is unaffected.
  const mine = await call('Pull', { device_id: DEVICE_ID, scope_unit_code: SCOPE, page_size: 5 });
  assert.equal(mine.records.length, 5);
});

test("pushing or pulling under another device's device_id is PERMISSION_DENIED", { timeout: 20_000 }, async () => {
  const otherId = crypto.randomUUID();
  const otherToken = await enrol(otherId, 'ROLE_TEAM_LEADER', SCOPE, 'person-nodetest-3');
  const caughtUp = await pullAll();

  // This device's token, the other device's id; and the other way round.
  const record = newCase({ summary: 'Mạo danh thiết bị khác', status: 'MEDIATION_STATUS_RECEIVED', round: 1 });
  const spoofs = [
    [deviceToken, otherId],
    [otherToken, DEVICE_ID],
    [deviceToken, crypto.randomUUID()], // Not enrolled at all.
  ];
  for (const [token, deviceId] of spoofs) {
    const metadata = authMetadata({ token });
    const err = await expectStatus(
      rpc(client, 'Push', pushRequest([record], crypto.randomUUID(), deviceId), metadata),
      grpc.status.PERMISSION_DENIED,
    );
    assert.equal(err.code, 7);
    const pullErr = await expectStatus(
      rpc(client, 'Pull', { device_id: deviceId, scope_unit_code: SCOPE, page_size: 5 }, metadata),
      grpc.status.PERMISSION_DENIED,
    );
    assert.equal(pullErr.code, 7);
  }
  const since = await pullAll(caughtUp.cursor);
  assert.equal(since.records.length, 0, `a spoofed push wrote: ${JSON.stringify(since.records)}`);

  // With its own id the other device's push goes through.
  const res = await rpc(client, 'Push', pushRequest([record], crypto.randomUUID(), otherId), authMetadata({ token: otherToken }));
  assert.equal(res.applied_records, 1);
});

test('each listener serves only its own service; AdminService needs an admin token', { timeout: 20_000 }, async () => {
  // AdminService is not on the device listener, SyncService not on the admin one.
  const adminOnDevice = new services.AdminService(server.address, grpc.credentials.createInsecure());
  const syncOnAdmin = new services.SyncService(server.adminAddress, grpc.credentials.createInsecure());
  try {
    const err = await expectStatus(
      rpc(adminOnDevice, 'GetServerStats', {}, authMetadata({ token: server.adminToken })),
      grpc.status.UNIMPLEMENTED,
    );
    assert.equal(err.code, 12);
    const err2 = await expectStatus(
      rpc(syncOnAdmin, 'Pull', { device_id: DEVICE_ID, scope_unit_code: SCOPE, page_size: 5 }, authMetadata({ token: deviceToken })),
      grpc.status.UNIMPLEMENTED,
    );
    assert.equal(err2.code, 12);
  } finally {
    adminOnDevice.close();
    syncOnAdmin.close();
  }

  // A device token is authenticated but not an admin's; no token is unauthenticated.
  const notAdmin = await expectStatus(rpc(admin, 'GetServerStats', {}, authMetadata({ token: deviceToken })), grpc.status.PERMISSION_DENIED);
  assert.equal(notAdmin.code, 7);
  const noToken = await expectStatus(rpc(admin, 'GetServerStats', {}, authMetadata()), grpc.status.UNAUTHENTICATED);
  assert.equal(noToken.code, 16);

  const stats = await adminCall('GetServerStats', {});
  assert.equal(stats.town_code, '206');
  assert.ok(BigInt(stats.last_seq) > BigInt(SEEDED_UNITS), 'the tests pushed records after the seeded units');
});

// ---------------------------------------------------------------------------
// Bundles, written and read from docs/PROTOCOL.md ("Bundles: sync with no
// link") with protobufjs for the messages and node:crypto for the rest.

const BUNDLE_MAGIC = Buffer.from('HAMLETB1');

function bundleTypes() {
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => (target.startsWith('google/protobuf/') ? target : path.join(PROTO_ROOT, target));
  root.loadSync('hamlet/v1/bundle.proto', { keepCase: true });
  const type = (name) => root.lookupType(`hamlet.v1.${name}`);
  return { SealedBundle: type('SealedBundle'), BundleHeader: type('BundleHeader'), BundleContent: type('BundleContent') };
}

const hkdf = (ikm, salt, info) => Buffer.from(crypto.hkdfSync('sha256', ikm, salt, info, 32));

// The bundle key of a header (its bytes as in the file), from a device's token.
function bundleKey(token, headerBytes, salt) {
  const secret = hkdf(Buffer.from(token), Buffer.alloc(0), Buffer.from('hamlet bundle secret v1'));
  return hkdf(secret, salt, Buffer.concat([Buffer.from('hamlet bundle key v1'), headerBytes]));
}

function sealBundle(types, token, direction, deviceId, content) {
  const salt = crypto.randomBytes(16);
  const header = Buffer.from(types.BundleHeader.encode(types.BundleHeader.fromObject(
    { version: 1, direction, device_id: deviceId, salt })).finish());
  const key = bundleKey(token, header, salt);
  const nonce = crypto.randomBytes(12);
  const cipher = crypto.createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(Buffer.concat([BUNDLE_MAGIC, header]));
  const plain = Buffer.from(types.BundleContent.encode(types.BundleContent.fromObject(content)).finish());
  const ciphertext = Buffer.concat([cipher.update(plain), cipher.final()]);
  const keyId = crypto.createHash('sha256').update(key).digest().subarray(0, 8);
  const sealed = Buffer.concat([keyId, nonce, ciphertext, cipher.getAuthTag()]);
  return Buffer.concat([BUNDLE_MAGIC, Buffer.from(types.SealedBundle.encode({ header, sealed }).finish())]);
}

function openBundle(types, token, bytes) {
  assert.deepEqual(bytes.subarray(0, 8), BUNDLE_MAGIC);
  const { header, sealed } = types.SealedBundle.decode(bytes.subarray(8));
  const { salt } = types.BundleHeader.decode(header);
  const key = bundleKey(token, Buffer.from(header), Buffer.from(salt));
  const body = Buffer.from(sealed);
  const decipher = crypto.createDecipheriv('aes-256-gcm', key, body.subarray(8, 20));
  decipher.setAAD(Buffer.concat([BUNDLE_MAGIC, header]));
  decipher.setAuthTag(body.subarray(body.length - 16));
  const plain = Buffer.concat([decipher.update(body.subarray(20, body.length - 16)), decipher.final()]);
  return {
    header: types.BundleHeader.toObject(types.BundleHeader.decode(header), { enums: String, longs: String }),
    content: types.BundleContent.toObject(types.BundleContent.decode(plain), { enums: String, longs: String }),
  };
}

// A server-streaming AdminService call; resolves with its messages.
function adminStream(method, request) {
  return new Promise((resolve, reject) => {
    const messages = [];
    const stream = admin[method](request, authMetadata({ token: server.adminToken }), {
      deadline: Date.now() + CALL_DEADLINE_MS,
    });
    stream.on('data', (message) => messages.push(message));
    stream.on('error', reject);
    stream.on('end', () => resolve(messages));
  });
}

test('a bundle sealed here from PROTOCOL.md is imported once, and one exported opens here', { timeout: 20_000 }, async () => {
  const types = bundleTypes();
  const record = newCase({ summary: 'Mang bằng tay: tranh chấp lối đi', status: 'MEDIATION_STATUS_RECEIVED', round: 1 });
  const bundle = sealBundle(types, deviceToken, 'BUNDLE_DIRECTION_TO_SERVER', DEVICE_ID, {
    export_time: { seconds: String(Math.floor(Date.now() / 1000)) },
    pushes: [{ ...pushRequest([record]), set_aside_refused: true }],
  });
  const imported = await adminStream('ImportBundle', { bundle });
  const last = imported[imported.length - 1];
  assert.equal(last.done, true);
  assert.equal(last.device_id, DEVICE_ID);
  assert.equal(String(last.records_applied), '1', JSON.stringify(last));
  const again = await adminStream('ImportBundle', { bundle });
  assert.equal(again[again.length - 1].already_held, true, JSON.stringify(again));
  const found = (await pullAll()).records.filter((r) => r.id === record.id);
  assert.equal(found.length, 1, 'the carried record is held once');
  assertSameRecord(found[0], record);

  // One changed byte: refused whole.
  const changed = Buffer.from(bundle);
  changed[changed.length - 3] ^= 0x10;
  await expectStatus(adminStream('ImportBundle', { bundle: changed }), grpc.status.DATA_LOSS);

  // The way back: the server's bundle for this device opens with its token
  // and holds what another device changed after this one's last pull (the
  // one above); its own writes it holds already, as its pulls omit them.
  const otherId = crypto.randomUUID();
  const otherToken = await enrol(otherId, 'ROLE_TEAM_LEADER', SCOPE, 'person-bundle-other');
  const later = newCase({ summary: 'Sau lần kéo cuối', status: 'MEDIATION_STATUS_RECEIVED', round: 1 });
  for (const fs of later.field_stamps) fs.stamp.node = otherId;
  await rpc(client, 'Push', pushRequest([later], crypto.randomUUID(), otherId), authMetadata({ token: otherToken }));
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'hamlet-bundle-')), 'to-device.hlb');
  const exported = await adminStream('ExportBundle', { device_id: DEVICE_ID, path: out });
  assert.equal(exported[exported.length - 1].done, true);
  const opened = openBundle(types, deviceToken, fs.readFileSync(out));
  assert.equal(opened.header.direction, 'BUNDLE_DIRECTION_TO_DEVICE');
  assert.equal(opened.header.device_id, DEVICE_ID);
  assert.deepEqual((opened.content.records || []).map((r) => r.id), [later.id]);
  assert.ok(opened.content.from_cursor && opened.content.from_cursor.length > 0, 'the export starts at the last pull');
  fs.rmSync(path.dirname(out), { recursive: true, force: true });

  // Without a path, the bundle comes back in the stream.
  const streamed = await adminStream('ExportBundle', { device_id: DEVICE_ID });
  assert.equal(streamed[streamed.length - 1].done, true);
  const bytes = Buffer.concat(streamed.filter((m) => m.bundle_chunk && m.bundle_chunk.length).map((m) => m.bundle_chunk));
  assert.equal(String(bytes.length), String(streamed[streamed.length - 1].bytes));
  assert.deepEqual((openBundle(types, deviceToken, bytes).content.records || []).map((r) => r.id), [later.id]);
});
